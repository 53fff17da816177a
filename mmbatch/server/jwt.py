"""JSON Web Tokens signed with RS256, verified in pure Python (no new dependency).

RS256 is RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 3.3, RFC 8017 8.2.2): the
signature s, as an integer, gives m = s^e mod n, which must equal the
encoding 0x00 0x01 FF..FF 0x00 DigestInfo(SHA-256) H(header.payload), of the
modulus' length. Only RS256 is accepted: "none", HMAC and every other
algorithm are refused before any key is looked at, so a token cannot choose
a weaker check; a token naming `crit` header extensions is refused too.
Keys come as a JWKS document (RFC 7517), as Cognito serves at
`<issuer>/.well-known/jwks.json`.

Claims are checked after the signature: `iss`, `aud` (or Cognito's
`client_id` in access tokens), `exp` and `nbf`/`iat` with a small leeway for
clock skew (time claims must be finite numbers: JSON has no NaN), and
optionally `token_use` and `nonce`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from mmbatch.server.errors import TokenInvalid

# DER of DigestInfo ::= SEQUENCE { AlgorithmIdentifier sha256, OCTET STRING (32) }, RFC 8017 9.2 note 1.
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
ALGORITHM = "RS256"
MIN_MODULUS_BITS = 2048
DEFAULT_LEEWAY = 60.0


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or any(c not in _B64URL for c in text):
        raise TokenInvalid("token part is not base64url", "malformed")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as e:
        raise TokenInvalid(f"token part is not base64url: {e}", "malformed") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _int_from_b64(text: Any, what: str) -> int:
    if not isinstance(text, str) or not text:
        raise TokenInvalid(f"JWK {what} is missing", "key")
    return int.from_bytes(b64url_decode(text), "big")


@dataclass(frozen=True)
class RsaPublicKey:
    """An RSA public key from a JWK: modulus n, exponent e, key id."""

    kid: str
    n: int
    e: int

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> RsaPublicKey:
        if jwk.get("kty") != "RSA":
            raise TokenInvalid(f"JWK {jwk.get('kid')!r} is not an RSA key", "key")
        if jwk.get("alg") not in (None, ALGORITHM):
            raise TokenInvalid(f"JWK {jwk.get('kid')!r} is for {jwk.get('alg')}, not {ALGORITHM}", "key")
        if jwk.get("use") not in (None, "sig"):
            raise TokenInvalid(f"JWK {jwk.get('kid')!r} is not a signing key", "key")
        key = cls(kid=str(jwk.get("kid") or ""), n=_int_from_b64(jwk.get("n"), "n"),
                  e=_int_from_b64(jwk.get("e"), "e"))
        if key.n.bit_length() < MIN_MODULUS_BITS or key.e < 3 or key.e % 2 == 0:
            raise TokenInvalid(f"JWK {key.kid!r} is too weak (modulus {key.n.bit_length()} bits)", "key")
        return key

    @property
    def size(self) -> int:
        return (self.n.bit_length() + 7) // 8


def parse_jwks(doc: Any) -> Dict[str, RsaPublicKey]:
    """kid -> key of a JWKS document; keys that are not RS256 signing keys are left out."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise TokenInvalid("JWKS document has no keys list", "key")
    out: Dict[str, RsaPublicKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict):
            continue
        try:
            key = RsaPublicKey.from_jwk(jwk)
        except TokenInvalid:
            continue
        out[key.kid] = key
    return out


def pkcs1_v15_sha256_encoding(message: bytes, size: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of SHA-256(message) for a modulus of `size` bytes."""
    t = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    if size < len(t) + 11:
        raise TokenInvalid("RSA modulus too short", "key")
    return b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t


def rs256_verify(key: RsaPublicKey, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is a valid RS256 signature of `message` under `key`."""
    size = key.size
    if len(signature) != size:
        return False
    s = int.from_bytes(signature, "big")
    if s >= key.n:
        return False
    m = pow(s, key.e, key.n)
    return hmac.compare_digest(m.to_bytes(size, "big"), pkcs1_v15_sha256_encoding(message, size))


def split(token: str) -> Tuple[Dict[str, Any], Dict[str, Any], bytes, bytes]:
    """(header, claims, signing input, signature) of a compact JWS; TokenInvalid if malformed."""
    if not isinstance(token, str) or len(token) > 16384:
        raise TokenInvalid("token is not a string of sensible length", "malformed")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenInvalid("token does not have three parts", "malformed")
    try:
        header = json.loads(b64url_decode(parts[0]), parse_constant=_no_constant)
        claims = json.loads(b64url_decode(parts[1]), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenInvalid("token header or payload is not JSON", "malformed") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenInvalid("token header or payload is not a JSON object", "malformed")
    return header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), b64url_decode(parts[2])


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259); Python's json would read them."""
    raise ValueError(f"{name} is not JSON")


def _number(claims: Mapping[str, Any], name: str) -> Optional[float]:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenInvalid(f"claim {name} is not a number", "malformed")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise TokenInvalid(f"claim {name} is out of range", "malformed") from None
    if not math.isfinite(number):
        raise TokenInvalid(f"claim {name} is not a finite number", "malformed")
    return number


def verify(
    token: str,
    keys: Mapping[str, RsaPublicKey],
    *,
    issuer: str,
    audience: str,
    token_use: Optional[str] = None,
    nonce: Optional[str] = None,
    now: Optional[float] = None,
    leeway: float = DEFAULT_LEEWAY,
) -> Dict[str, Any]:
    """The claims of `token` once its signature and claims check out; TokenInvalid otherwise.

    `audience` is matched against `aud` (a string or a list), or against
    `client_id` when the token has no `aud` (Cognito access tokens).
    """
    header, claims, signing_input, signature = split(token)
    if header.get("alg") != ALGORITHM:
        raise TokenInvalid(f"token algorithm {header.get('alg')!r} is not {ALGORITHM}", "algorithm")
    if "crit" in header:  # RFC 7515 4.1.11: extensions a verifier does not understand must be refused
        raise TokenInvalid("token names critical header extensions this verifier does not know", "malformed")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenInvalid(f"token key id {kid!r} is not in the issuer's key set", "key")
    if not rs256_verify(key, signing_input, signature):
        raise TokenInvalid("token signature does not verify", "signature")
    t = time.time() if now is None else now
    exp = _number(claims, "exp")
    if exp is None:
        raise TokenInvalid("token has no expiry", "malformed")
    if t > exp + leeway:
        raise TokenInvalid(f"token expired {int(t - exp)}s ago", "expired")
    nbf = _number(claims, "nbf")
    iat = _number(claims, "iat")
    if (nbf is not None and t + leeway < nbf) or (iat is not None and t + leeway < iat):
        raise TokenInvalid("token is not valid yet (issued in the future)", "not-yet-valid")
    if claims.get("iss") != issuer:
        raise TokenInvalid(f"token issuer {claims.get('iss')!r} is not {issuer!r}", "issuer")
    aud = claims.get("aud", claims.get("client_id"))
    auds: List[Any] = aud if isinstance(aud, list) else [aud]
    if audience not in auds:
        raise TokenInvalid(f"token audience {aud!r} is not {audience!r}", "audience")
    if token_use is not None and claims.get("token_use") != token_use:
        raise TokenInvalid(f"token_use {claims.get('token_use')!r} is not {token_use!r}", "token-use")
    if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
        raise TokenInvalid("token nonce does not match the login request", "nonce")
    return claims

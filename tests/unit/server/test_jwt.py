"""RS256 JWT verification against a JWKS served on 127.0.0.1: what Cognito's
id tokens must pass, and every way a token is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from mmbatch.server import jwt
from mmbatch.server.errors import TokenInvalid
from mmbatch.server.oidc import JwksCache
from tests.conftest import unavailable

AUD = "testclient0123456789"


def claims(fake, **over):
    now = int(time.time())
    c = {"sub": "u-1", "aud": AUD, "iss": fake.issuer, "token_use": "id", "iat": now, "exp": now + 3600,
         "nonce": "n-1", "cognito:username": "alice"}
    c.update(over)
    return c


def keys_from(fake):
    return JwksCache(fake.issuer + "/.well-known/jwks.json").keys_for(None)


def verify(fake, token, **kw):
    args = {"issuer": fake.issuer, "audience": AUD, "token_use": "id", "nonce": "n-1"}
    args.update(kw)
    return jwt.verify(token, keys_from(fake), **args)


def test_valid_token_from_local_jwks_is_accepted(fake_cognito, rsa_key):
    got = verify(fake_cognito, rsa_key.token(claims(fake_cognito)))
    assert got["sub"] == "u-1" and got["cognito:username"] == "alice"


@pytest.mark.parametrize("over,reason", [
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"aud": "another-client"}, "audience"),
    ({"aud": ["x", "y"]}, "audience"),
    ({"iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Other"}, "issuer"),
    ({"token_use": "access"}, "token-use"),
    ({"nonce": "replayed"}, "nonce"),
    ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 7200}, "not-yet-valid"),
])
def test_bad_claims_are_refused(fake_cognito, rsa_key, over, reason):
    with pytest.raises(TokenInvalid) as e:
        verify(fake_cognito, rsa_key.token(claims(fake_cognito, **over)))
    assert e.value.reason == reason


def test_expiry_leeway_is_small(fake_cognito, rsa_key):
    now = time.time()
    token = rsa_key.token(claims(fake_cognito, exp=int(now) - 30))
    assert verify(fake_cognito, token, now=now)["sub"] == "u-1"  # 30 s of clock skew is tolerated
    with pytest.raises(TokenInvalid):
        verify(fake_cognito, token, now=now + 120)


def test_signature_of_another_key_with_the_same_kid_is_refused(fake_cognito, other_key):
    with pytest.raises(TokenInvalid) as e:
        verify(fake_cognito, other_key.token(claims(fake_cognito)))
    assert e.value.reason == "signature"


def test_tampered_payload_is_refused(fake_cognito, rsa_key):
    token = rsa_key.token(claims(fake_cognito, sub="u-1"))
    head, _body, sig = token.split(".")
    forged = jwt.b64url_encode(json.dumps(claims(fake_cognito, sub="admin")).encode())
    with pytest.raises(TokenInvalid) as e:
        verify(fake_cognito, f"{head}.{forged}.{sig}")
    assert e.value.reason == "signature"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", None])
def test_other_algorithms_are_refused_before_any_key(fake_cognito, rsa_key, alg):
    token = rsa_key.token(claims(fake_cognito), header={"alg": alg})
    with pytest.raises(TokenInvalid) as e:
        verify(fake_cognito, token)
    assert e.value.reason == "algorithm"


def test_unknown_key_id_and_malformed_tokens(fake_cognito, rsa_key):
    with pytest.raises(TokenInvalid) as e:
        verify(fake_cognito, rsa_key.token(claims(fake_cognito), header={"kid": "rotated-away"}))
    assert e.value.reason == "key"
    for bad in ["", "a.b", "a.b.c.d", "!!.e30.", "e30.e30.@@", "W10.e30.AA"]:
        with pytest.raises(TokenInvalid) as e:
            verify(fake_cognito, bad)
        assert e.value.reason == "malformed", bad


def test_short_and_truncated_signatures_are_refused(fake_cognito, rsa_key):
    token = rsa_key.token(claims(fake_cognito))
    head, body, sig = token.split(".")
    raw = jwt.b64url_decode(sig)
    for bad in (raw[:-1], raw + b"\0", b"\0" * len(raw), (rsa_key.n + 1).to_bytes(len(raw), "big")):
        with pytest.raises(TokenInvalid):
            verify(fake_cognito, f"{head}.{body}.{jwt.b64url_encode(bad)}")


def test_weak_and_foreign_keys_are_left_out_of_the_key_set():
    keys = jwt.parse_jwks({"keys": [
        {"kty": "RSA", "kid": "small", "n": jwt.b64url_encode((2 ** 1023 + 1).to_bytes(128, "big")), "e": "AQAB"},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
    ]})
    assert keys == {}


def test_signature_made_by_openssl_verifies(tmp_path):
    """Interoperability: a PKCS#1 v1.5 SHA-256 signature from the openssl CLI passes our RS256 check."""
    if not shutil.which("openssl"):
        unavailable("openssl CLI not installed")
    key = tmp_path / "k.pem"
    msg = tmp_path / "m"
    msg.write_bytes(b"header.payload")
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
                   check=True, capture_output=True)
    modulus = subprocess.run(["openssl", "rsa", "-in", str(key), "-noout", "-modulus"], check=True,
                             capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key), str(msg)], check=True,
                         capture_output=True).stdout
    pub = jwt.RsaPublicKey(kid="o", n=int(modulus, 16), e=65537)
    assert jwt.rs256_verify(pub, b"header.payload", sig)
    assert not jwt.rs256_verify(pub, b"header.payloaD", sig)


def _sign_encoded(key, em: bytes) -> bytes:
    """A raw RSA signature of an arbitrary encoded message (what a forger or a sloppy signer makes)."""
    assert len(em) == key.size
    return pow(int.from_bytes(em, "big"), key.d, key.n).to_bytes(key.size, "big")


def test_only_the_exact_pkcs1_v15_sha256_encoding_verifies(rsa_key):
    """Signatures made with the right key over encodings that are almost right are refused:
    every byte of 0x00 0x01 FF..FF 0x00 DigestInfo(SHA-256) H is compared."""
    import hashlib

    msg = b"header.payload"
    k = rsa_key.size
    h = hashlib.sha256(msg).digest()
    info = jwt.SHA256_DIGEST_INFO + h
    good = jwt.pkcs1_v15_sha256_encoding(msg, k)
    pub = jwt.RsaPublicKey(kid="k", n=rsa_key.n, e=rsa_key.e)
    assert jwt.rs256_verify(pub, msg, _sign_encoded(rsa_key, good))
    sha1_info = bytes.fromhex("3021300906052b0e03021a05000414") + hashlib.sha1(msg).digest()
    no_null_info = bytes.fromhex("302f300b0609608648016503040201") + bytes.fromhex("0420") + h
    garbage = b"\x55" * 40
    bad = {
        "sha1 digest": b"\x00\x01" + b"\xff" * (k - len(sha1_info) - 3) + b"\x00" + sha1_info,
        "params omitted": b"\x00\x01" + b"\xff" * (k - len(no_null_info) - 3) + b"\x00" + no_null_info,
        "garbage after the digest": b"\x00\x01" + b"\xff" * (k - len(info) - len(garbage) - 3) + b"\x00" + info
                                    + garbage,
        "block type 2": b"\x00\x02" + good[2:],
        "a zero in the padding": good[:10] + b"\x00" + good[11:],
        "short padding": b"\x00\x01" + b"\xff" * 7 + b"\x00" + b"\x00" * (k - len(info) - 10) + info,
        "no separator": good[:k - len(info) - 1] + b"\xff" + info,
    }
    for what, em in bad.items():
        assert len(em) == k, what
        assert not jwt.rs256_verify(pub, msg, _sign_encoded(rsa_key, em)), what


def test_critical_extensions_and_non_finite_times_are_refused(fake_cognito, rsa_key):
    with pytest.raises(TokenInvalid) as e:
        verify(fake_cognito, rsa_key.token(claims(fake_cognito), header={"crit": ["exp"], "exp": 1}))
    assert e.value.reason == "malformed"
    for over in ({"exp": float("nan")}, {"exp": float("inf")}, {"exp": 10 ** 400}, {"iat": float("nan")}):
        with pytest.raises(TokenInvalid) as e:
            verify(fake_cognito, rsa_key.token(claims(fake_cognito, **over)))  # signed, so only the claim is wrong
        assert e.value.reason == "malformed", over

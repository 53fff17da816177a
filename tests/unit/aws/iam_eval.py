"""A small evaluator of IAM policy statements, enough to test the kit's policies.

`decide(policy, action, resource, context)` follows IAM's rules for one
identity or resource policy: an explicit Deny wins, then any Allow, else
the implicit deny. Actions match case-insensitively, resources by ARN with
`*` and `?` wildcards, and conditions with the operators the kit uses
(StringEquals, StringLike, StringNotEquals,
StringNotEqualsIfExists, Null, Bool); any other
operator, NotAction, NotResource or NotPrincipal raises, so a policy this
evaluator cannot judge fails its test instead of passing it.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

ALLOW, DENY, IMPLICIT_DENY = "Allow", "Deny", "ImplicitDeny"


def _as_list(value: Any) -> List[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, ignore_case: bool = False) -> bool:
    rx = "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + "$"
    return re.match(rx, value, re.IGNORECASE if ignore_case else 0) is not None


def _condition(block: Dict[str, Dict[str, Any]], context: Dict[str, str]) -> bool:
    for op, tests in block.items():
        for key, wanted in tests.items():
            wanted = [str(w) for w in _as_list(wanted)]
            have: Optional[str] = context.get(key)
            if op == "StringEquals":
                ok = have is not None and have in wanted
            elif op == "StringLike":
                ok = have is not None and any(_wildcard(w, have) for w in wanted)
            elif op == "StringNotEquals":  # negated: true when the key is absent
                ok = have is None or have not in wanted
            elif op == "StringNotEqualsIfExists":
                ok = have is None or have not in wanted
            elif op == "Null":  # "true": the key is absent; "false": it is present
                ok = (have is None) == (wanted[0].lower() == "true")
            elif op == "Bool":
                ok = have is not None and have.lower() in [w.lower() for w in wanted]
            else:
                raise ValueError(f"condition operator {op} is not understood by this evaluator")
            if not ok:
                return False
    return True


def decide(policy: Dict[str, Any], action: str, resource: str, context: Optional[Dict[str, str]] = None) -> str:
    context = context or {}
    allowed = False
    for st in _as_list(policy["Statement"]):
        for unsupported in ("NotAction", "NotResource", "NotPrincipal"):
            if unsupported in st:
                raise ValueError(f"{unsupported} is not understood by this evaluator")
        if not any(_wildcard(a, action, ignore_case=True) for a in _as_list(st["Action"])):
            continue
        if not any(_wildcard(r, resource) for r in _as_list(st["Resource"])):
            continue
        if not _condition(st.get("Condition", {}), context):
            continue
        if st["Effect"] == "Deny":
            return DENY
        if st["Effect"] == "Allow":
            allowed = True
    return ALLOW if allowed else IMPLICIT_DENY

"""The `[store]` settings of /etc/mmbatch/config.toml that install.sh does not take.

install.sh writes the node's first config.toml from `--store` and `--mode`
(and the runtime it chains to); an S3 store also needs the bucket's region,
its encryption and the bucket owner. The user data of `mmbatch aws
user-data` runs this module with the venv's python right after install.sh:
it sets those keys in place (comments and other keys kept, see
`mmbatch.install.node_config.set_value`), validates the result with the
loader mmbatchd uses, and replaces the file atomically with its mode kept.

    python -m mmbatch.aws.node_settings --file F [--region R] [--sse S] [--kms-key-id K] [--expected-bucket-owner A]
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import argparse
import sys
from typing import Dict, Optional, Sequence

from mmbatch import config
from mmbatch.errors import MmbatchError
from mmbatch.install.atomic import read_text, write_atomic
from mmbatch.install.node_config import set_value

# option name -> key under [store]
KEYS = {"region": "region", "sse": "sse", "kms_key_id": "kms_key_id",
        "expected_bucket_owner": "expected_bucket_owner"}


def apply(text: str, values: Dict[str, str], path: str = config.DEFAULT_PATH) -> str:
    """`text` with each `[store]` key of `values` set; ConfigError names a bad value."""
    for key, value in values.items():
        if key not in KEYS:
            raise MmbatchError(f"unknown store setting {key!r}")
        text = set_value(text, "store", KEYS[key], value)
    cfg = config.loads(text, path=path)
    for key, value in values.items():
        if getattr(cfg.store, KEYS[key]) != value:
            raise MmbatchError(f"{path}: store.{KEYS[key]} came out as {getattr(cfg.store, KEYS[key])!r}")
    return text


def _load_check(path: str) -> None:
    """Read back what is about to replace the file, through mmbatchd's loader."""
    config.load(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmbatch.aws.node_settings",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--file", default=config.DEFAULT_PATH)
    for name in KEYS:
        p.add_argument("--" + name.replace("_", "-"), dest=name)
    args = p.parse_args(argv)
    values = {k: getattr(args, k) for k in KEYS if getattr(args, k) is not None}
    try:
        text = read_text(args.file)
        if text is None:
            raise MmbatchError(f"{args.file} does not exist", hint="run install.sh first: it writes the file")
        new = apply(text, values, path=args.file)
        changed = new != text
        if changed:
            write_atomic(args.file, new.encode("utf-8"), check=_load_check)
    except MmbatchError as e:
        print(f"mmbatch-node-settings: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mmbatch-node-settings: error: {e.filename or args.file}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"changed={int(changed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

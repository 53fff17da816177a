"""Launch-template user data that makes an ECS-optimized AL2023/AL2 instance an mmbatch node.

AWS Batch wants launch-template user data as a MIME multipart document
(it adds its own parts, such as the ECS cluster, next to ours); cloud-init
runs each `text/x-shellscript` part once, at first boot, in the final
stage, before the ECS agent starts (ecs.service is ordered after
cloud-final). Our one part, `mmbatch-node.sh`, does in order:

1. ECS agent settings in /etc/ecs/ecs.config (one line per key, other lines
   kept):
   - ECS_CONTAINER_STOP_TIMEOUT: the time between the agent's SIGTERM and
     its SIGKILL. mmbatch-runtime holds a stop signal of a managed job
     until its final checkpoint is committed (`spot.kill_wait_seconds`,
     100 s by default), so the agent must wait at least that long, or its
     SIGKILL comes first.
   - ECS_CONTAINER_START_TIMEOUT: the agent gives up on a container whose
     start takes longer. The runtime restores a checkpoint inside `create`,
     which runs while the agent waits for the start, bounded by
     `checkpoint.restore_timeout` (10 min by default): the agent must wait
     longer than that, or it abandons a restore that would have worked.
   - ECS_ENABLE_SPOT_INSTANCE_DRAINING=true: on a Spot notice the agent
     sets the instance DRAINING, so no new job is placed on a node with two
     minutes to live. Draining stops only service tasks; Batch jobs are not
     service tasks, so it does not stop them, and mmbatchd's final
     checkpoints go ahead as without it.
   - ECS_NVIDIA_RUNTIME=mmbatch on GPU nodes is install.sh's (`--gpu`).
2. The mmbatch source: a tarball from S3 (`aws s3 cp` with the instance
   role; the AWS CLI is installed with dnf/yum when missing) or HTTPS,
   checked against its SHA-256 when one is given. A directory `offline/`
   in it is passed to install.sh as `--offline` (CRIU packages for AL,
   wheels).
3. install.sh --store --mode --gpu --default-runtime --restart-docker:
   mmbatch becomes Docker's default runtime (ECS task definitions cannot
   name one), and dockerd is restarted for it (without blocking on
   cloud-init).
4. `python -m mmbatch.aws.node_settings`: the S3 store's region,
   encryption and bucket owner in /etc/mmbatch/config.toml.

For a dry run against a scratch root (tests), the script reads
MMBATCH_HOST_ROOT (passed to install.sh as --host-root), MMBATCH_SRC_DIR (a
source tree: nothing is fetched), MMBATCH_PYTHON and MMBATCH_INSTALL_ARGS;
none is set on a node.
"""

# Optional[...] as in mmbatch.config (Python 3.9 syntax).
# ruff: noqa: UP045

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Dict, List

from mmbatch import __version__
from mmbatch.aws import node_settings
from mmbatch.aws.arns import S3Location, check_account, check_kms_key_arn, check_region, split_s3_object_url
from mmbatch.aws.errors import KitError
from mmbatch.errors import MmbatchError

# EC2 takes at most 16 KiB of user data before base64.
MAX_USER_DATA_BYTES = 16 * 1024
BOUNDARY = "==MMBATCH-USER-DATA=="
PART_NAME = "mmbatch-node.sh"

# The defaults of spot.kill_wait_seconds and checkpoint.restore_timeout (mmbatch.config).
KILL_WAIT_SECONDS = 100.0
RESTORE_TIMEOUT_SECONDS = 600.0
MARGIN_SECONDS = 20.0

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HTTPS_RE = re.compile(r"^https://[^\s'\"]+$")
# A newline in a value would end its line in the script and, at the start of a
# line, could open a MIME part of its own (`--BOUNDARY`): refused in every value.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class UserDataOptions:
    """What `mmbatch aws user-data` takes; `validate()` checks every value."""

    store: str
    source: str
    mode: str = "iterative"
    gpu: str = "auto"
    source_sha256: str = ""
    region: str = ""
    sse: str = "AES256"
    kms_key_id: str = ""
    expected_bucket_owner: str = ""
    stop_timeout: str = "120s"
    start_timeout: str = "11m"
    spot_draining: bool = True

    def store_settings(self) -> Dict[str, str]:
        """The [store] keys node_settings sets (S3 stores only)."""
        if not self.store.startswith("s3://"):
            return {}
        values = {"region": self.region, "sse": self.sse}
        if self.kms_key_id:
            values["kms_key_id"] = self.kms_key_id
        if self.expected_bucket_owner:
            values["expected_bucket_owner"] = self.expected_bucket_owner
        return values

    def validate(self) -> UserDataOptions:
        from mmbatch.install.node_config import render

        for option, value in (("--store", self.store), ("--source", self.source), ("--mode", self.mode),
                              ("--gpu", self.gpu), ("--source-sha256", self.source_sha256),
                              ("--region", self.region), ("--sse", self.sse), ("--kms-key-arn", self.kms_key_id),
                              ("--account", self.expected_bucket_owner), ("--stop-timeout", self.stop_timeout),
                              ("--start-timeout", self.start_timeout)):
            if _CONTROL_RE.search(value):
                raise KitError(f"{value!r} contains a control character (a newline?)", option=option)
        if self.region:  # also when unused (a file store, an https source): it is in the script
            check_region(self.region)
        if self.kms_key_id:  # the bucket policy and the IAM policy match the key by its ARN
            check_kms_key_arn(self.kms_key_id)
        if self.gpu not in ("auto", "yes", "no"):
            raise KitError(f"{self.gpu!r} is not auto, yes or no", option="--gpu")
        try:
            text = render(store_url=self.store, mode=self.mode)
        except MmbatchError as e:
            raise KitError(e.message, option="--store/--mode", hint=e.hint) from None
        if self.store.startswith("s3://"):
            S3Location.parse(self.store)
            check_region(self.region)
            if self.expected_bucket_owner:
                check_account(self.expected_bucket_owner, option="--account")
            if self.sse == "aws:kms" and not self.kms_key_id:
                raise KitError("--sse aws:kms needs --kms-key-id", option="--sse")
            try:
                node_settings.apply(text, self.store_settings())
            except MmbatchError as e:
                raise KitError(e.message, option="--region/--sse/--kms-key-id/--expected-bucket-owner") from None
        elif not self.store.startswith(("file:///", "/")):
            raise KitError(f"unsupported store {self.store!r}", option="--store",
                           hint="s3://bucket/prefix, or file:///path of a file system mounted on every node")
        if self.source.startswith("s3://"):
            split_s3_object_url(self.source, "--source")
            check_region(self.region, option="--region (the region of the source's bucket)")
        elif not _HTTPS_RE.match(self.source):
            raise KitError(f"{self.source!r} is neither s3://bucket/key nor an https:// URL", option="--source",
                           hint="a tarball of the mmbatch source tree (docs/aws.md says how to make one)")
        if self.source_sha256 and not _SHA256_RE.match(self.source_sha256):
            raise KitError("not 64 lowercase hex digits", option="--source-sha256")
        stop = _seconds(self.stop_timeout, "--stop-timeout")
        if stop < KILL_WAIT_SECONDS + MARGIN_SECONDS:
            raise KitError(
                f"{self.stop_timeout} is shorter than the runtime holds a stop signal for a final checkpoint "
                f"({KILL_WAIT_SECONDS:.0f}s, spot.kill_wait_seconds) plus {MARGIN_SECONDS:.0f}s",
                option="--stop-timeout", hint="120s or more")
        start = _seconds(self.start_timeout, "--start-timeout")
        if start < RESTORE_TIMEOUT_SECONDS + MARGIN_SECONDS:
            raise KitError(
                f"{self.start_timeout} is shorter than a restore may take inside the container's create "
                f"({RESTORE_TIMEOUT_SECONDS:.0f}s, checkpoint.restore_timeout) plus {MARGIN_SECONDS:.0f}s",
                option="--start-timeout", hint="11m or more")
        return self

    def ecs_settings(self) -> List[tuple]:
        """(key, value) lines for /etc/ecs/ecs.config, in Go duration syntax the agent parses."""
        out = [
            ("ECS_CONTAINER_STOP_TIMEOUT", f"{int(_seconds(self.stop_timeout, '--stop-timeout'))}s"),
            ("ECS_CONTAINER_START_TIMEOUT", f"{int(_seconds(self.start_timeout, '--start-timeout'))}s"),
        ]
        if self.spot_draining:
            out.append(("ECS_ENABLE_SPOT_INSTANCE_DRAINING", "true"))
        return out


def _seconds(value: str, option: str) -> float:
    from mmbatch.durations import parse_duration

    try:
        return parse_duration(value)
    except ValueError as e:
        raise KitError(f"{value!r}: {e}", option=option) from None


_SCRIPT = r"""#!/bin/bash
# mmbatch node set-up: generated by `mmbatch aws user-data` (mmbatch @VERSION@).
# cloud-init runs it once, at first boot, before the ECS agent starts. What each
# step does and why: docs/aws.md. Output: /var/log/cloud-init-output.log.
set -euo pipefail

STORE=@STORE@
MODE=@MODE@
GPU=@GPU@
SOURCE=@SOURCE@
SOURCE_SHA256=@SOURCE_SHA256@
SOURCE_REGION=@SOURCE_REGION@

# A dry run against a scratch root (tests) sets these; on a node they are unset.
HR=${MMBATCH_HOST_ROOT:-}
SRC=${MMBATCH_SRC_DIR:-}
PY=${MMBATCH_PYTHON:-/opt/mmbatch/bin/python3}
read -r -a EXTRA <<< "${MMBATCH_INSTALL_ARGS:-}"

log() { printf 'mmbatch-user-data: %s\n' "$*"; }
die() { printf 'mmbatch-user-data: error: %s\n' "$*" >&2; exit 1; }

# 1. ECS agent settings: one line per key, set where it was (else appended), every
#    other line (ECS_CLUSTER from Batch's own part, ...) kept.
#    STOP_TIMEOUT > the runtime's hold of a stop signal for the final checkpoint;
#    START_TIMEOUT > a restore inside the container's create;
#    SPOT_INSTANCE_DRAINING: no new job on a node with 2 minutes left (draining
#    does not stop Batch jobs, so final checkpoints are unaffected).
ecs_set() {
  local file=$HR/etc/ecs/ecs.config tmp
  mkdir -p "$(dirname "$file")"
  [ -f "$file" ] || : > "$file"
  tmp=$(mktemp "$file.XXXXXX")
  awk -v k="$1" -v v="$2" '
    index($0, k "=") == 1 { if (!done) print k "=" v; done = 1; next }
    { print }
    END { if (!done) print k "=" v }' "$file" > "$tmp"
  cat "$tmp" > "$file"
  rm -f "$tmp"
}
@ECS_SETTINGS@
log "ECS agent settings written to $HR/etc/ecs/ecs.config"

# 2. The mmbatch source tree.
fetch_source() {
  local dir=/var/lib/mmbatch/src tarball=/var/lib/mmbatch/src.tar.gz found
  mkdir -p /var/lib/mmbatch
  chmod 0700 /var/lib/mmbatch
  case "$SOURCE" in
    s3://*)
      if ! command -v aws >/dev/null; then
        log "installing the AWS CLI"
        if command -v dnf >/dev/null; then
          dnf install -y -q awscli-2 || dnf install -y -q awscli
        else
          yum install -y -q awscli
        fi
      fi
      aws s3 cp --only-show-errors --region "$SOURCE_REGION" "$SOURCE" "$tarball" ;;
    *) curl -fsSL --retry 5 -o "$tarball" "$SOURCE" ;;
  esac
  if [ -n "$SOURCE_SHA256" ]; then
    echo "$SOURCE_SHA256  $tarball" | sha256sum -c --quiet - || die "$SOURCE does not match its SHA-256"
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  tar -xzf "$tarball" -C "$dir"
  found=$(find "$dir" -maxdepth 2 -name install.sh -type f -print -quit)
  [ -n "$found" ] || die "no install.sh in $SOURCE"
  SRC=$(dirname "$found")
}
if [ -z "$SRC" ]; then
  fetch_source
fi
log "mmbatch source: $SRC"

# 3. install.sh: CRIU, the venv, config.toml, mmbatch as Docker's default runtime.
args=(--store "$STORE" --mode "$MODE" --gpu "$GPU" --default-runtime --restart-docker)
if [ -d "$SRC/offline" ]; then args+=(--offline "$SRC/offline"); fi
if [ -n "$HR" ]; then args+=(--host-root "$HR"); fi
bash "$SRC/install.sh" "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"}

# 4. The store settings install.sh does not take.
@NODE_SETTINGS@
log "done"
"""


def render_script(opts: UserDataOptions) -> str:
    """The shell part: values quoted for bash, ASCII only."""
    opts.validate()
    q = shlex.quote
    settings = opts.store_settings()
    if settings:
        argv = ['"$PY"', "-m", "mmbatch.aws.node_settings", '--file "$HR/etc/mmbatch/config.toml"']
        for key, value in settings.items():
            argv.append(f"--{key.replace('_', '-')} {q(value)}")
        node_line = " ".join(argv)
    else:
        node_line = ": # a file store: nothing to add"
    text = (_SCRIPT
            .replace("@VERSION@", __version__)
            .replace("@STORE@", q(opts.store))
            .replace("@MODE@", q(opts.mode))
            .replace("@GPU@", q(opts.gpu))
            .replace("@SOURCE@", q(opts.source))
            .replace("@SOURCE_SHA256@", q(opts.source_sha256))
            .replace("@SOURCE_REGION@", q(opts.region))
            .replace("@ECS_SETTINGS@", "\n".join(f"ecs_set {k} {q(v)}" for k, v in opts.ecs_settings()))
            .replace("@NODE_SETTINGS@", node_line))
    try:
        text.encode("ascii")
    except UnicodeEncodeError:
        raise KitError("user data must be ASCII (a value has other characters)") from None
    if any(line.startswith("--" + BOUNDARY) for line in text.splitlines()):
        # validate() refuses newlines in values; this is what a miss would let through
        raise KitError("a value would end the user data's MIME part early")
    return text


def render(opts: UserDataOptions) -> str:
    """The MIME multipart document for the launch template (before base64)."""
    doc = MIMEMultipart("mixed", boundary=BOUNDARY)
    part = MIMEText(render_script(opts), "x-shellscript", "us-ascii")
    part.add_header("Content-Disposition", "attachment", filename=PART_NAME)
    doc.attach(part)
    text = doc.as_string()
    size = len(text.encode("ascii"))
    if size > MAX_USER_DATA_BYTES:
        raise KitError(f"user data is {size} bytes; EC2 takes at most {MAX_USER_DATA_BYTES}")
    return text

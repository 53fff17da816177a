"""The user data: valid MIME for cloud-init, a script bash accepts, options checked."""

from __future__ import annotations

import email
import subprocess

import pytest

from mmbatch.aws import user_data
from mmbatch.aws.errors import KitError

KEY = "arn:aws:kms:us-east-1:111122223333:key/0123abcd-0123-0123-0123-0123456789ab"


def opts(**kw) -> user_data.UserDataOptions:
    base = dict(store="s3://ckpt-bucket/mmbatch", source="s3://deploy-bucket/mmbatch.tar.gz", region="us-east-1")
    base.update(kw)
    return user_data.UserDataOptions(**base)


def _script(text: str) -> str:
    msg = email.message_from_string(text)
    assert msg.is_multipart() and msg.get_content_type() == "multipart/mixed"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/x-shellscript"]
    assert parts[0].get_filename() == user_data.PART_NAME
    return parts[0].get_payload(decode=True).decode("ascii")


@pytest.mark.parametrize("o", [
    opts(),
    opts(sse="aws:kms", kms_key_id=KEY, expected_bucket_owner="111122223333", gpu="yes", mode="none"),
    opts(store="file:///fsx/mmbatch", source="https://example.invalid/mmbatch.tar.gz", region=""),
    opts(source_sha256="a" * 64, spot_draining=False, stop_timeout="3m", start_timeout="15m"),
])
def test_mime_and_bash_syntax(o, tmp_path):
    text = user_data.render(o)
    assert len(text.encode()) <= user_data.MAX_USER_DATA_BYTES
    script = _script(text)
    path = tmp_path / "s.sh"
    path.write_text(script)
    out = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert script.startswith("#!/bin/bash\n")
    assert "--default-runtime --restart-docker" in script


def test_ecs_settings():
    assert opts().ecs_settings() == [("ECS_CONTAINER_STOP_TIMEOUT", "120s"), ("ECS_CONTAINER_START_TIMEOUT", "660s"),
                                     ("ECS_ENABLE_SPOT_INSTANCE_DRAINING", "true")]
    assert opts(spot_draining=False, stop_timeout="5m").ecs_settings() == [
        ("ECS_CONTAINER_STOP_TIMEOUT", "300s"), ("ECS_CONTAINER_START_TIMEOUT", "660s")]


def test_values_are_quoted_for_bash():
    script = _script(user_data.render(opts(store="s3://ckpt-bucket/it's")))
    assert "STORE='s3://ckpt-bucket/it'\"'\"'s'" in script


@pytest.mark.parametrize("kw,words", [
    ({"stop_timeout": "60s"}, "--stop-timeout"),
    ({"start_timeout": "3m"}, "--start-timeout"),
    ({"stop_timeout": "soon"}, "--stop-timeout"),
    ({"source": "http://insecure/x.tgz"}, "--source"),
    ({"source": "s3://deploy-bucket"}, "names a bucket"),
    ({"source_sha256": "xyz"}, "--source-sha256"),
    ({"gpu": "maybe"}, "--gpu"),
    ({"mode": "sometimes"}, "--store/--mode"),
    ({"store": "ftp://x/y"}, "--store"),
    ({"region": ""}, "--region"),
    ({"sse": "aws:kms"}, "needs --kms-key-id"),
    ({"sse": "rot13"}, "--sse"),
    ({"expected_bucket_owner": "me"}, "--account"),
])
def test_bad_options_are_refused(kw, words):
    with pytest.raises(KitError, match=words):
        user_data.render(opts(**kw))


def test_non_ascii_and_size_limits():
    with pytest.raises(KitError):
        user_data.render(opts(source="https://example.invalid/m\u00e9.tar.gz"))
    with pytest.raises(KitError, match="at most 16384"):
        user_data.render(opts(source="https://example.invalid/" + "x" * 17000 + ".tar.gz"))


INJECTED = "\n--" + user_data.BOUNDARY + "\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho injected\n"


@pytest.mark.parametrize("kw,option", [
    # a file store with an https source uses no region, yet the value lands in the script
    ({"store": "file:///fsx/mmbatch", "source": "https://example.invalid/m.tgz", "region": "us-east-1" + INJECTED},
     "--region"),
    ({"sse": "aws:kms", "kms_key_id": KEY + INJECTED}, "--kms-key-arn"),
    ({"store": "s3://ckpt-bucket/mmbatch\n"}, "--store"),
    ({"stop_timeout": "120s\n"}, "--stop-timeout"),
])
def test_a_newline_in_a_value_cannot_open_a_mime_part(kw, option):
    with pytest.raises(KitError, match=f"^{option}: .*control character"):
        user_data.render(opts(**kw))


def test_region_and_kms_key_are_checked_even_where_unused():
    with pytest.raises(KitError, match="--region: not a region"):
        user_data.render(opts(store="file:///fsx/mmbatch", source="https://example.invalid/m.tgz", region="mars"))
    with pytest.raises(KitError, match="--kms-key-arn: not a KMS key ARN"):
        user_data.render(opts(sse="aws:kms", kms_key_id="alias/mmbatch"))


def test_the_part_boundary_is_guarded_after_validation():
    class Unchecked(user_data.UserDataOptions):
        def validate(self) -> user_data.UserDataOptions:
            return self

    bad = Unchecked(store="file:///fsx/mmbatch", source="https://example.invalid/m.tgz", region="x" + INJECTED)
    with pytest.raises(KitError, match="MIME part"):
        user_data.render_script(bad)
    good = _script(user_data.render(opts()))
    assert sum(line.startswith("--" + user_data.BOUNDARY) for line in good.splitlines()) == 0

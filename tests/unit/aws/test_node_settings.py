"""node_settings: the S3 keys install.sh does not take, set in place and validated."""

from __future__ import annotations

import os
import stat

from mmbatch import config
from mmbatch.aws import node_settings
from mmbatch.install.node_config import render

KEY = "arn:aws:kms:us-east-1:111122223333:key/0123abcd-0123-0123-0123-0123456789ab"


def test_sets_keys_keeps_the_rest_and_mode(tmp_path, capsys):
    path = tmp_path / "config.toml"
    text = render(store_url="s3://b-1/p", mode="iterative", delegate="runc")
    path.write_text(text)
    os.chmod(path, 0o600)
    argv = ["--file", str(path), "--region", "eu-west-1", "--sse", "aws:kms", "--kms-key-id", KEY,
            "--expected-bucket-owner", "111122223333"]
    assert node_settings.main(argv) == 0
    assert capsys.readouterr().out == "changed=1\n"
    cfg = config.load(str(path))
    assert (cfg.store.url, cfg.store.region, cfg.store.sse, cfg.store.kms_key_id, cfg.store.expected_bucket_owner) \
        == ("s3://b-1/p", "eu-west-1", "aws:kms", KEY, "111122223333")
    assert cfg.runtime.delegate == "runc"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert node_settings.main(argv) == 0
    assert capsys.readouterr().out == "changed=0\n"


def test_bad_value_changes_nothing(tmp_path, capsys):
    path = tmp_path / "config.toml"
    path.write_text(render(store_url="s3://b-1/p"))
    before = path.read_text()
    assert node_settings.main(["--file", str(path), "--sse", "rot13"]) == 1
    assert "sse" in capsys.readouterr().err
    assert path.read_text() == before
    assert node_settings.main(["--file", str(tmp_path / "absent.toml"), "--region", "us-east-1"]) == 1
    assert "install.sh first" in capsys.readouterr().err

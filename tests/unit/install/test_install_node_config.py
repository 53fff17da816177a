"""The first config.toml: choices applied to DEFAULT_TOML, validated, written once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmbatch import config
from mmbatch.errors import ConfigError
from mmbatch.install import node_config
from mmbatch.install.errors import InstallError


@pytest.mark.parametrize("store,mode,delegate", [
    (None, None, None),
    ("s3://bucket/prefix", None, None),
    ("file:///mnt/fsx/checkpoints", "none", None),
    (None, "iterative", "/usr/bin/nvidia-container-runtime"),
    ('s3://bucket/with "quote" and \\ backslash', None, "runc"),
])
def test_render_applies_choices(store, mode, delegate) -> None:
    text = node_config.render(store, mode, delegate)
    cfg = config.loads(text)
    assert cfg.store.url == (store or config.StoreSection().url)
    assert cfg.checkpoint.mode == (mode or "iterative")
    assert cfg.runtime.delegate == (delegate or "runc")
    assert text.count("\n#") >= 1, "comments kept"
    if store is None and mode is None and delegate is None:
        assert text == config.DEFAULT_TOML


@pytest.mark.parametrize("store,mode,key", [
    ("ftp://nope", None, "store.url"),
    ("s3://", None, "store.url"),
    (None, "sometimes", "checkpoint.mode"),
])
def test_render_rejects_bad_choices(store, mode, key) -> None:
    with pytest.raises(ConfigError, match=key):
        node_config.render(store, mode, path="/etc/mmbatch/config.toml")


def test_set_value_adds_missing_key_and_section() -> None:
    text = node_config.set_value("[runtime]\nstate_dir = \"/run/x\"\n", "runtime", "delegate", "crun")
    assert text == '[runtime]\ndelegate = "crun"\nstate_dir = "/run/x"\n'
    text = node_config.set_value("[runtime]\n", "store", "url", "s3://b/p")
    assert config.loads(text).store.url == "s3://b/p"


def test_write_once(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "mmbatch" / "config.toml"
    assert node_config.write_if_absent(str(path), "s3://b/p", "none", "runc")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert config.load(str(path)).store.url == "s3://b/p"
    before = path.read_bytes()
    assert not node_config.write_if_absent(str(path), "s3://other/p", "iterative", "crun")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.toml"]
    notes = node_config.differences(config.load(str(path)), "s3://other/p", "iterative", "crun")
    assert len(notes) == 3 and 'delegate = "crun"' in notes[2]


def test_write_refuses_invalid_existing(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[checkpoint]\nmode = \"sometimes\"\n")
    with pytest.raises(InstallError, match="checkpoint.mode"):
        node_config.write_if_absent(str(path))
    assert path.read_text() == "[checkpoint]\nmode = \"sometimes\"\n"


def test_bad_choice_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m" / "config.toml"
    with pytest.raises(ConfigError):
        node_config.write_if_absent(str(path), store_url="ftp://x")
    assert not path.exists()

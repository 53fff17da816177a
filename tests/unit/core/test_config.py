import pytest

from mmbatch import config
from mmbatch.durations import format_duration, parse_duration
from mmbatch.errors import ConfigError


def test_defaults_and_default_toml_agree():
    assert config.loads(config.DEFAULT_TOML, "x").to_dict() == config.Config().to_dict()


def test_missing_file_means_defaults(tmp_path):
    cfg = config.load(str(tmp_path / "absent.toml"))
    assert cfg.store.url.startswith("file://") and cfg.checkpoint.interval == 900


@pytest.mark.parametrize("text,key,reason", [
    ("[checkpoint]\nmodee = 1", "checkpoint.modee", "unknown key"),
    ("[nope]\na = 1", "[nope]", "unknown section"),
    ("[checkpoint]\nmode = \"sometimes\"", "checkpoint.mode", "must be one of"),
    ("[checkpoint]\ninterval = \"soon\"", "checkpoint.interval", "cannot read duration"),
    ("[checkpoint]\ninterval = \"1s\"", "checkpoint.interval", "too short"),
    ("[checkpoint]\nkeep = 0", "checkpoint.keep", "at least 1"),
    ("[checkpoint]\nkeep = \"2\"", "checkpoint.keep", "whole number"),
    ("[checkpoint]\ndiagnosis = \"yes\"", "checkpoint.diagnosis", "true or false"),
    ("[checkpoint]\nstaging_dir = \"relative\"", "checkpoint.staging_dir", "absolute"),
    ("[store]\nurl = \"ftp://x\"", "store.url", "unsupported store URL"),
    ("[store]\nurl = \"s3:///prefix\"", "store.url", "bucket"),
    ("[store]\nsse = \"aws:kms\"", "store.sse", "kms_key_id"),
    ("[store]\nchunk_size = 1000", "store.chunk_size", "multiple of 4096"),
    ("[runtime]\ndelegate = \"/opt/mmbatch/bin/mmbatch-runtime\"", "runtime.delegate", "itself"),
    ("[checkpoint\nmode=1", "", "not valid TOML"),
    ("checkpoint = 3", "checkpoint", "must be a table"),
])
def test_errors_name_file_key_and_reason(text, key, reason):
    with pytest.raises(ConfigError) as e:
        config.loads(text, "/etc/mmbatch/config.toml")
    msg = str(e.value)
    assert msg.startswith("/etc/mmbatch/config.toml")
    assert key in msg and reason in msg


def test_valid_overrides():
    cfg = config.loads('[checkpoint]\ninterval = "1h30m"\nkeep = 3\n[store]\nurl = "s3://b/p"\nsse = "none"\n')
    assert cfg.checkpoint.interval == 5400 and cfg.checkpoint.keep == 3 and cfg.store.url == "s3://b/p"


@pytest.mark.parametrize("text,seconds", [("15m", 900), ("90s", 90), ("1h30m", 5400), ("120", 120), (45, 45),
                                          ("1.5s", 1.5), ("2d", 172800), ("500ms", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "m", "5x", "-1", -3, True, None, "1h 30m", "h1"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration_round_trips():
    for s in (900, 5400, 90, 86400 + 61):
        assert parse_duration(format_duration(s)) == s

"""Where events.log goes: MMBATCH_LOG_DIR, else the node config's log.dir, else /var/log/mmbatch."""

from __future__ import annotations

import json
import os

import pytest

from mmbatch import events


@pytest.fixture(autouse=True)
def reset():
    yield
    events.configure("")


def test_log_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MMBATCH_LOG_DIR", raising=False)
    assert events.log_dir() == events.DEFAULT_LOG_DIR
    events.configure(str(tmp_path / "from-config"))
    assert events.log_dir() == str(tmp_path / "from-config")
    monkeypatch.setenv("MMBATCH_LOG_DIR", str(tmp_path / "from-env"))
    assert events.log_dir() == str(tmp_path / "from-env")


def test_cli_uses_the_configs_log_dir(monkeypatch, tmp_path):
    """An event the CLI emits lands where mmbatchd, reading the same config, follows it."""
    from mmbatch import cli

    monkeypatch.delenv("MMBATCH_LOG_DIR", raising=False)
    conf = tmp_path / "config.toml"
    conf.write_text(f'[log]\ndir = "{tmp_path / "logs"}"\n[runtime]\nstate_dir = "{tmp_path / "run"}"\n')
    seen = {}

    def fake_doctor(args, cfg):
        seen["dir"] = events.log_dir()
        events.emit(events.make("probe", "job-1", None))
        return 0

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "doctor", fake_doctor))
    assert cli.main(["--config", str(conf), "doctor"]) == 0
    assert seen["dir"] == str(tmp_path / "logs")
    with open(os.path.join(tmp_path, "logs", "events.log")) as f:
        assert json.loads(f.readline())["kind"] == "probe"


def _with_func(parser, command, func):
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices[command].set_defaults(func=func)
    return parser

"""Node installation helpers that install.sh calls: pure edits of host files.

Each module owns one host file and keeps its logic pure (text or dict in,
text or dict out) apart from a small CLI that reads and writes the file
atomically: `daemon_json` (/etc/docker/daemon.json), `ecs_config`
(/etc/ecs/ecs.config), `node_config` (/etc/mmbatch/config.toml) and
`launchers` (the fast entry points of the venv). Stdlib only, so the
system python can run them before the venv exists.
"""

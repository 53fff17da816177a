"""The OpenAPI document and its schema validator, and the Prometheus text
format of the metrics (pure: no sockets, no daemon)."""

from __future__ import annotations

import json
import os

import pytest

from mmbatch.api import metrics as metrics_mod
from mmbatch.api import openapi
from mmbatch.api.metrics import EventLogFollower, Metrics, parse_text
from mmbatch.api.openapi import SchemaError, validate


def test_the_document_is_consistent():
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    json.dumps(doc)  # serializable as served

    def refs(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    names = set(doc["components"]["schemas"])
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in names, ref
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "200" in op["responses"], (method, path)
    for name, sch in doc["components"]["schemas"].items():  # the validator knows every keyword used
        try:
            validate(None, sch)
        except SchemaError as e:
            assert "unsupported keywords" not in str(e), name


@pytest.mark.parametrize("instance,schema,needle", [
    ("x", {"type": "integer"}, "expected integer"),
    (True, {"type": "integer"}, "expected integer"),
    (1.5, {"type": "integer"}, "expected integer"),
    (None, {"type": "string"}, "expected string"),
    ({"a": 1}, {"type": "object", "required": ["b"]}, "missing required property 'b'"),
    ({"a": 1}, {"type": "object", "properties": {}, "additionalProperties": False}, "unexpected property 'a'"),
    ({"a": "x"}, {"type": "object", "additionalProperties": {"type": "number"}}, "a: expected number"),
    ([1, "2"], {"type": "array", "items": {"type": "integer"}}, "[1]: expected integer"),
    ("c", {"enum": ["a", "b"]}, "not one of"),
    (-1, {"type": "number", "minimum": 0}, "less than 0"),
    ("", {"type": "string", "minLength": 1}, "shorter than 1"),
    ({}, {"type": "object", "minProperties": 1}, "at least 1 properties"),
    (1, {"type": "integer", "pattern": "x"}, "unsupported keywords"),
    ({"interval": 5, "extra": 1}, openapi.schema("ConfigUpdate"), "unexpected property 'extra'"),
])
def test_the_validator_rejects(instance, schema, needle):
    with pytest.raises(SchemaError, match=None) as e:
        validate(instance, schema)
    assert needle in str(e.value)


@pytest.mark.parametrize("instance,schema", [
    (None, {"type": ["string", "null"]}),
    (3, {"type": "number"}),
    ({"mode": "none"}, openapi.schema("ConfigUpdate")),
    ({"interval": "15m"}, openapi.schema("ConfigUpdate")),
    ({"error": "x", "hint": "y"}, openapi.schema("Error")),
])
def test_the_validator_accepts(instance, schema):
    validate(instance, schema)


def test_render_is_valid_prometheus_text():
    m = Metrics()
    m.checkpoint_committed("periodic", 0.07, 4000, 1000)
    m.checkpoint_committed("spot-final", 3.0, 6000, 0)
    m.checkpoint_failed("periodic")
    m.observe_event({"kind": "restore-fallback"})
    m.observe_event({"kind": "job-exit"})
    m.add_gauge("mmbatch_test_gauge", "a gauge", lambda: [({"q": 'a"b\\c\nd'}, 2.5)])
    text = m.render()
    assert text.endswith("\n")
    s = parse_text(text)
    assert s["mmbatch_checkpoints_total"] == {(("reason", "periodic"),): 1.0, (("reason", "spot-final"),): 1.0}
    assert s["mmbatch_checkpoint_failures_total"] == {(("reason", "periodic"),): 1.0}
    assert s["mmbatch_restores_total"] == {(("outcome", "fallback"),): 1.0}
    assert s["mmbatch_freeze_seconds_bucket"][(("le", "0.1"),)] == 1.0
    assert s["mmbatch_freeze_seconds_bucket"][(("le", "5"),)] == 2.0
    assert s["mmbatch_freeze_seconds_count"][()] == 2.0
    assert s["mmbatch_dedup_ratio"][()] == pytest.approx(0.9)
    assert s["mmbatch_test_gauge"] == {(("q", 'a"b\\c\nd'),): 2.5}, "label values are escaped and read back"
    buckets = [v for (k, v) in sorted(((float(lbl[0][1]), v) for lbl, v in
                                       s["mmbatch_freeze_seconds_bucket"].items()))]
    assert buckets == sorted(buckets), "histogram buckets are cumulative"
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            assert line.split()[3] in ("counter", "gauge", "histogram")


def test_counters_only_go_up_and_dedup_starts_at_zero():
    m = Metrics()
    assert m.dedup_ratio() == 0.0
    with pytest.raises(ValueError):
        m.checkpoints.inc(-1)


def test_parse_text_rejects_what_a_scraper_would():
    with pytest.raises(ValueError):
        parse_text("no_type_line 1\n")
    with pytest.raises(ValueError):
        parse_text("# TYPE x counter\nx{a=b} 1\n")
    with pytest.raises(ValueError):
        parse_text("# TYPE x counter\nx one\n")


def test_event_log_follower_reads_only_new_whole_lines_and_survives_rotation(tmp_path):
    path = tmp_path / "events.log"
    path.write_text(json.dumps({"kind": "restore"}) + "\n")
    seen = []
    f = EventLogFollower(str(path), seen.append)
    assert f.poll() == 0, "what was there before the daemon started is not counted"
    with open(path, "a") as out:
        out.write(json.dumps({"kind": "cold-start"}) + "\n" + '{"kind": "rest')
    assert f.poll() == 1 and seen == [{"kind": "cold-start"}]
    with open(path, "a") as out:
        out.write('ore"}\nnot json\n')
    assert f.poll() == 1 and seen[-1] == {"kind": "restore"}
    os.rename(path, tmp_path / "events.log.1")  # logrotate
    path.write_text(json.dumps({"kind": "restore-fallback"}) + "\n")
    assert f.poll() == 1 and seen[-1] == {"kind": "restore-fallback"}
    missing = EventLogFollower(str(tmp_path / "later.log"), seen.append)
    assert missing.poll() == 0
    (tmp_path / "later.log").write_text(json.dumps({"kind": "restore"}) + "\n")
    assert missing.poll() == 1, "a log created after the daemon started is read from its start"


def test_an_event_the_handler_chokes_on_does_not_cost_the_next_ones(tmp_path):
    path = tmp_path / "events.log"
    path.write_text("")
    seen = []

    def on_event(ev):
        float(ev["time"])  # what the CloudWatch hook does: an odd time raises
        seen.append(ev["kind"])

    f = EventLogFollower(str(path), on_event)
    with open(path, "a") as out:
        for t, kind in (("soon", "restore"), (1.0, "cold-start"), (2.0, "restore")):
            out.write(json.dumps({"time": t, "kind": kind}) + "\n")
    assert f.poll() == 3 and seen == ["cold-start", "restore"]


def test_restore_kinds_are_the_ones_the_runtime_writes():
    import inspect

    from mmbatch import restorer

    src = inspect.getsource(restorer)
    for kind in metrics_mod.RESTORE_KINDS:
        assert f'"{kind}"' in src, kind

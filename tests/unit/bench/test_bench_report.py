"""bench/report.py: report.md from sample results (no root, no docker; figures: tests/functional/bench)."""

from __future__ import annotations

import os
import re
import sys

import pytest

from tests.unit.bench import bench_samples as samples
from tests.unit.bench.bench_samples import BENCHES, all_results, build


def section(text: str, title_start: str) -> str:
    """The text of the `## N. <title_start>...` section, up to the next heading."""
    m = re.search(r"^## \d+\. " + re.escape(title_start) + r".*?$(.*?)(?=^## )", text, re.S | re.M)
    assert m, f"no section {title_start!r} in:\n{text}"
    return m.group(1)


def row(text: str, first_cell: str) -> list:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{text}")


@pytest.fixture
def no_matplotlib(monkeypatch):
    """As on a machine without the bench extra: `import matplotlib` fails."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_every_bench_gets_a_section_with_ratios_from_the_alternated_pairs(tmp_path, no_matplotlib):
    text = build(tmp_path, all_results(), samples.run_json([samples.bench_entry(n) for n in BENCHES]))

    assert "Generated 1970-01-01 00:10 UTC by `bench/run --quick` (quick mode, 10.0 min)." in text
    ck = section(text, "Freeze and checkpoint time")
    r = row(ck, "256 MiB")
    # freeze: runc's zero-gap pair left out -> 2.00x; wall: median of pairwise 1.0, 2.0, 1.5 -> 1.50x, not 2.0/1.0
    assert r[1:4] == ["0.100", "0.300", "2.00x"]
    assert r[4:6] == ["0.150 (0.120)", "1.25x"]
    assert r[6:9] == ["1.00", "2.00", "1.50x"]
    assert r[9:11] == ["0.90 (0.60)", "1.50x"]
    assert "CRIU in its dump.log 4.2.1" in ck

    rs = row(section(text, "Restore time"), "256 MiB")
    assert rs[1:] == ["0.40", "0.60", "1.50x", "1.20", "3.00x", "0.80 (0.40)", "2.00x"]

    s3 = section(text, "S3 throughput")
    assert row(s3, "upload")[1:] == ["2.00", "256", "2.00", "256", "2.00x"]  # pairwise 2, 1, 3 -> 2.00x, not 1.00x
    assert row(s3, "download")[1:] == ["2.00", "256", "1.00", "512", "0.50x"]

    fan = section(text, "Spot interruption fan-out")
    # baseline: 10 x 512 MiB at the same run's boto3 upload rate (256 MiB/s) = 20 s
    assert row(fan, "10 x 512 MiB")[1:] == ["60.0", "59.0, 60.0, 62.0", "20.0", "3.00x", "yes"]
    assert "(256 MiB/s)" in fan

    pt = section(text, "Passthrough overhead")
    assert row(pt, "`docker run --rm true`, median ms (10 alternated pairs)")[1:4] == ["200.0", "250.0", "1.25x"]
    assert row(pt, "runtime `state` call, median ms (10 runs)")[1:4] == ["5.00", "20.00", "4.00x"]

    assert "Stale" not in text and "Failed in this run" not in text and "not idle" not in text
    assert "Not in this report" not in text
    for name in ("kernel", "CRIU", "Docker", "Podman", "SeaweedFS", "load average at start"):
        assert f"| {name} |" in text


def test_goals_table_says_no_where_a_goal_is_missed(tmp_path, no_matplotlib):
    text = build(tmp_path, all_results(), samples.run_json([samples.bench_entry(n) for n in BENCHES]))
    goals = text.split("## Goals", 1)[1].split("\n## ", 1)[0]
    assert row(goals, "docker run through mmbatch / runc")[1:] == ["1.25x", "<= 1.10x", "**no**"]
    assert row(goals, "runtime call overhead minus interpreter floor")[1:] == ["3.00 ms", "<= 2 ms", "**no**"]
    assert row(goals, "10 x 512 MiB final checkpoints after the notice")[1:] == ["60.0 s", "<= 90 s", "yes"]
    # incremental medians over the two rounds: 1% -> 3% of full (goal 6%); 50% -> 59%/53% (goal 55%)
    assert row(goals, "incremental bytes, 1% of 10 MiB changed")[1:] == ["3.0% of full", "<= 6%", "yes"]
    assert row(goals, "incremental bytes, 50% of 10 MiB changed")[1:] == ["59.0% of full", "<= 55%", "**no**"]


def test_a_job_left_uncommitted_misses_the_fan_out_goal_even_when_fast(tmp_path, no_matplotlib):
    results = all_results()
    results["interruption"] = samples.interruption(seconds=30.0, committed=False)
    text = build(tmp_path, results, samples.run_json([samples.bench_entry(n) for n in BENCHES]))
    assert row(text, "10 x 512 MiB final checkpoints after the notice")[1:] == ["30.0 s", "<= 90 s", "**no**"]
    assert row(section(text, "Spot interruption"), "10 x 512 MiB")[-1] == "**no**"


def test_a_failed_bench_is_named_at_the_top_with_the_end_of_its_log(tmp_path, no_matplotlib):
    results = all_results()
    del results["interruption"]
    tail = "Traceback (most recent call last):\nAssertionError: timeout after 300s waiting for all final checkpoints"
    benches = [samples.bench_entry(n) for n in BENCHES[:-1]]
    benches.append(samples.bench_entry("interruption", "failed (exit 1)", tail))
    text = build(tmp_path, results, samples.run_json(benches))

    head = text.split("## Machine and versions", 1)[0]
    assert "**Failed in this run: interruption (failed (exit 1))" in head
    assert "Spot interruption fan-out" not in text
    assert "Not in this report (no results): interruption." in text
    this_run = text.split("## This run", 1)[1]
    assert row(this_run, "interruption")[1] == "failed (exit 1)"
    assert "interruption (failed (exit 1)), last lines of its log:" in this_run
    assert "AssertionError: timeout after 300s waiting for all final checkpoints" in this_run
    assert "10 x 512 MiB final checkpoints" not in text  # no goal row from a result that does not exist


def test_podman_error_is_the_peer_result_and_flagged(tmp_path, no_matplotlib):
    results = all_results()
    err = "podman container checkpoint --leave-running ...: Error: CRIU is missing features"
    results["podman"] = samples.podman(error=err)
    del results["podman"]["results"], results["podman"]["restores"]
    text = build(tmp_path, results, samples.run_json([samples.bench_entry(n) for n in BENCHES]))

    assert "**Recorded an error as its result: podman (see its section).**" in text
    ck = section(text, "Freeze and checkpoint time")
    assert "Podman (peer) could not be measured here; its exact error is the result:" in ck
    assert err in ck
    assert row(ck, "256 MiB")[4:6] == ["", ""]  # no Podman numbers invented
    assert row(text.split("## This run", 1)[1], "podman")[1].startswith("ok, with an error recorded")


def test_results_of_another_run_are_marked_stale_and_not_used_as_a_baseline(tmp_path, no_matplotlib):
    results = all_results()
    results["s3_throughput"] = samples.s3_throughput(run_id="earlier00000")
    benches = [samples.bench_entry(n) for n in BENCHES if n != "s3_throughput"]
    text = build(tmp_path, results, samples.run_json(benches))

    s3 = section(text, "S3 throughput")
    assert "*Stale: the results of s3_throughput are from an earlier run, not this one.*" in s3
    assert "## 5. S3 throughput (mmbatch repository vs plain boto3) (stale)" in text
    fan = section(text, "Spot interruption fan-out")
    assert "(not measured in this run: no ratio)" in fan
    assert row(fan, "10 x 512 MiB")[3:5] == ["n/a", "n/a"]
    assert "Stale (from an earlier run, not this one's baseline): s3_throughput." in text


def test_stale_goals_are_marked(tmp_path, no_matplotlib):
    results = all_results()
    results["passthrough"] = samples.passthrough(run_id="earlier00000")
    text = build(tmp_path, results, samples.run_json([samples.bench_entry(n) for n in BENCHES[1:]]))
    assert row(text, "docker run through mmbatch / runc (stale)")[-1] == "**no**"


def test_smoke_mode_and_a_busy_machine_are_said(tmp_path, no_matplotlib):
    text = build(tmp_path, all_results(), samples.run_json([samples.bench_entry(n) for n in BENCHES], mode="smoke",
                                                           load_before="3.50 2.00 1.00"))
    assert "These numbers mean nothing" in text
    assert "*The machine was not idle at the start (load average 3.50 2.00 1.00)" in text


def test_a_malformed_result_is_reported_not_dropped(tmp_path, no_matplotlib):
    results = all_results()
    del results["passthrough"]["state_call"]
    text = build(tmp_path, results, samples.run_json([samples.bench_entry(n) for n in BENCHES]))
    assert "Could not render the results of passthrough: KeyError: 'state_call'" in section(text, "passthrough")
    assert section(text, "Freeze and checkpoint time")  # the other sections are still there


def test_without_run_json_the_report_still_renders_what_is_there(tmp_path, no_matplotlib):
    text = build(tmp_path, {"s3_throughput": samples.s3_throughput(run_id="")}, None)
    assert "by bench/report.py" in text
    assert "(no run.json: bench/report.py run alone)" in text
    assert "Not in this report (no results): passthrough, checkpoint, restore, incremental, interruption." in text


def test_without_matplotlib_the_report_says_so_and_links_no_figure(tmp_path, no_matplotlib):
    text = build(tmp_path, all_results(), samples.run_json([samples.bench_entry(n) for n in BENCHES]))
    assert "*no figures: matplotlib is missing" in text
    assert "![" not in text
    assert not os.path.exists(tmp_path / "out" / "figures")

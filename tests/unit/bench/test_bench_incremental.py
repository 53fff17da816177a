"""bench/incremental.py's summary of rounds: medians of bytes and of ratios to each round's full checkpoint."""

from __future__ import annotations

import pytest

from bench import incremental
from tests.unit.bench import bench_samples as samples


def by_pct(rows):
    return {r["pct"]: r for r in rows}


def test_ratios_are_to_the_same_rounds_full_checkpoint_then_the_median():
    rounds = samples.incremental_rounds()
    res = by_pct(incremental.summarize(rounds, [1.0, 50.0]))
    one, half = res[1.0], res[50.0]
    a_full, b_full = rounds[0]["full"], rounds[1]["full"]

    assert one["n"] == 2 and half["n"] == 2
    # each step against its own round's full upload (the rounds' full sizes differ), then the median of the two
    assert one["server_ratio"] == pytest.approx(((a_full["server_bytes"] * 2 // 100) / a_full["server_bytes"]
                                                 + (b_full["server_bytes"] * 4 // 100) / b_full["server_bytes"]) / 2)
    assert one["server_ratio"] == pytest.approx(0.03, abs=1e-6)
    assert one["uploaded_ratio"] == pytest.approx(0.03, abs=1e-6)
    assert half["server_ratio"] == pytest.approx(0.59, abs=1e-6)
    assert half["uploaded_ratio"] == pytest.approx(0.53, abs=1e-6)
    assert one["full_server_bytes"] == (a_full["server_bytes"] + b_full["server_bytes"]) / 2
    assert one["checkpoint_seconds"] == 1.5 and half["checkpoint_seconds"] == 4.0
    assert one["full_checkpoint_seconds"] == 5.0
    assert one["blocks_rewritten"] == 1 and half["blocks_rewritten"] == 5


def test_goal_is_the_changed_fraction_plus_five_percent_on_both_counts():
    res = by_pct(incremental.summarize(samples.incremental_rounds(), [1.0, 50.0]))
    assert res[1.0]["goal_ratio"] == pytest.approx(0.06)
    assert res[1.0]["goal_met"] is True
    assert res[50.0]["goal_ratio"] == pytest.approx(0.55)
    assert res[50.0]["goal_met"] is False  # the server saw 59% although the checkpointer counted 53%


def test_goal_fails_when_only_the_checkpointer_count_is_over():
    rounds = samples.incremental_rounds()
    for r in rounds:
        for s in r["steps"]:
            if s["pct"] == 1.0:
                s["server_bytes"] = r["full"]["server_bytes"] // 100
                s["bytes_uploaded"] = r["full"]["bytes_uploaded"] // 10
    one = by_pct(incremental.summarize(rounds, [1.0, 50.0]))[1.0]
    assert one["server_ratio"] < one["goal_ratio"] < one["uploaded_ratio"]
    assert one["goal_met"] is False


def test_rows_follow_the_requested_fraction_order_whatever_the_round_order():
    rows = incremental.summarize(samples.incremental_rounds(), [50.0, 1.0])
    assert [r["pct"] for r in rows] == [50.0, 1.0]


def test_a_fraction_no_round_measured_is_an_error_not_an_empty_median():
    with pytest.raises(ValueError, match="no round measured the 10% step"):
        incremental.summarize(samples.incremental_rounds(), [1.0, 10.0])

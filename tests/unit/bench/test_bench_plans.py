"""bench/run's plans and bench/common.py's pure helpers (no bench is run)."""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import os

import pytest

from bench import common

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# The list: passthrough, freeze/checkpoint by size and restore (checkpoint), incremental bytes,
# S3 throughput, interruption fan-out, the Podman peer.
EVERY_BENCH = {"passthrough", "checkpoint", "podman", "incremental", "s3_throughput", "interruption"}


@pytest.fixture(scope="module")
def bench_run(request):
    """bench/run loaded as a module, without its re-exec into the project venv."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MMBATCH_BENCH_REEXEC", "1")
    path = os.path.join(ROOT, "bench", "run")
    loader = importlib.machinery.SourceFileLoader("bench_run_under_test", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    request.addfinalizer(mp.undo)
    return module


@pytest.mark.parametrize("mode", ["QUICK", "SMOKE", "FULL"])
def test_each_mode_runs_every_bench_with_arguments_its_parser_accepts(bench_run, mode):
    plan = getattr(bench_run, mode)
    assert {name for name, _, _ in plan} == EVERY_BENCH
    assert len(plan) == len(EVERY_BENCH)
    for name, argv, timeout in plan:
        module = importlib.import_module(f"bench.{name}")
        module.parser().parse_args(argv)  # SystemExit on an unknown flag or a bad value
        assert timeout > 0


def test_quick_and_full_take_medians_of_several_runs(bench_run):
    for plan in (bench_run.QUICK, bench_run.FULL):
        for name, argv, _ in plan:
            args = vars(importlib.import_module(f"bench.{name}").parser().parse_args(argv))
            runs = [args[k] for k in ("pairs", "calls", "runs", "rounds", "repeat") if k in args]
            assert runs and min(runs) >= 3, (name, argv)


def test_report_renders_every_bench_the_plans_run():
    from bench import report

    assert set(report.ORDER) == EVERY_BENCH


def test_parse_bytes():
    assert common.parse_bytes("4096") == 4096
    assert common.parse_bytes("256K") == 256 * 1024
    assert common.parse_bytes("2M") == 2 * common.MiB
    assert common.parse_bytes("1.5GiB") == 1536 * common.MiB
    assert common.parse_bytes("512mb") == 512 * common.MiB
    with pytest.raises(ValueError, match="not a size"):
        common.parse_bytes("lots")


def test_median_ratio_pairs_alternated_runs_and_skips_a_zero_baseline():
    assert common.median_ratio([2.0, 2.0, 6.0], [1.0, 2.0, 2.0]) == 2.0  # 2, 1, 3
    assert common.median_ratio([3.0, 1.0], [0.0, 0.5]) == 2.0
    with pytest.raises(ValueError):
        common.median_ratio([1.0], [0.0])
    assert common.median_ratio_or_none([1.0], [0.0]) is None


def test_positive_int_refuses_zero_runs():
    assert common.positive_int("3") == 3
    for bad in ("0", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.positive_int(bad)


def test_alternate_swaps_the_order_every_pair():
    calls = []

    def make(name):
        def fn():
            calls.append(name)
            return float(len(calls))
        return fn

    samples = common.alternate({"a": make("a"), "b": make("b")}, pairs=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [3.0, 6.0, 7.0], "b": [4.0, 5.0, 8.0]}

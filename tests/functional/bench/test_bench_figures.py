"""bench/report.py's figures: PNG files drawn by matplotlib (the `bench` extra), linked from the report.

Functional, not unit: it needs matplotlib, which the Python 3.9 unit-test
venv of scripts/test does not install. No root, no docker.
"""

from __future__ import annotations

import re

from tests.conftest import unavailable
from tests.unit.bench import bench_samples as samples
from tests.unit.bench.bench_samples import BENCHES, all_results, build


def test_figures_are_png_files_linked_from_the_report(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        unavailable("matplotlib is missing (the bench extra: pip install -e .[bench])")
    figures = tmp_path / "out" / "figures"
    figures.mkdir(parents=True)
    (figures / "interruption.png").write_bytes(b"left over from an earlier run")
    results = all_results()
    del results["s3_throughput"]  # no same-run upload rate: no fan-out ratio, so no fan-out figure
    text = build(tmp_path, results, samples.run_json([samples.bench_entry(n) for n in BENCHES]))

    links = re.findall(r"!\[[^\]]*\]\((figures/[a-z0-9_]+\.png)\)", text)
    assert sorted(links) == ["figures/checkpoint.png", "figures/incremental.png", "figures/passthrough.png",
                             "figures/restore.png"]
    for link in links:
        with open(tmp_path / "out" / link, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not (figures / "interruption.png").exists()
    assert "no figures" not in text

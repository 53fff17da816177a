#!/usr/bin/env python3
"""bench/report.md and its figures from the results in bench/results/.

Reads each bench's JSON (bench/common.py `save`) and bench/run's run.json
(mode, timings, failures), writes bench/report.md with one section per
bench: a table of medians and ratios, and a PNG (bench/figures/) that plots
each measure as a ratio to its baseline measured in the same run (1.0 =
as fast as the baseline). A bench that failed or did not run is named, with
the tail of its log, instead of being left out. Results of another run than
run.json's are marked stale.

matplotlib (Agg backend) draws the figures: a bench-only dependency.

Usage: python3 bench/report.py [--results DIR] [--out bench/report.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import RESULTS  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT = os.path.join(HERE, "report.md")
FIGURES = "figures"  # beside report.md
MiB = 1024 * 1024

ORDER = ("passthrough", "checkpoint", "podman", "incremental", "s3_throughput", "interruption")
FIGURE_NAMES = ("passthrough", "checkpoint", "restore", "incremental", "s3_throughput", "interruption")


@dataclass
class Goal:
    measure: str
    value: str
    goal: str
    met: Optional[bool]


@dataclass
class Section:
    title: str
    lines: List[str] = field(default_factory=list)
    goals: List[Goal] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)


# -- pure helpers -----------------------------------------------------------------


def pairwise(rows_a: Sequence[Dict], rows_b: Sequence[Dict], key: str) -> Optional[float]:
    """Median of a[i][key] / b[i][key] over alternated runs (None without a usable pair)."""
    ratios = [a[key] / b[key] for a, b in zip(rows_a, rows_b)
              if isinstance(a.get(key), (int, float)) and isinstance(b.get(key), (int, float)) and b[key]]
    return statistics.median(ratios) if ratios else None


def fmt_ratio(r: Optional[float]) -> str:
    return f"{r:.2f}x" if isinstance(r, (int, float)) else "n/a"


def fmt_s(v: Optional[float], digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "n/a"


def yes_no(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("yes" if met else "**no**")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def load(results_dir: str) -> Tuple[Dict[str, Dict], Dict]:
    """(results by bench name, run.json or {})."""
    found: Dict[str, Dict] = {}
    for name in ORDER:
        path = os.path.join(results_dir, f"{name}.json")
        try:
            with open(path) as f:
                found[name] = json.load(f)
        except (OSError, ValueError):
            continue
    try:
        with open(os.path.join(results_dir, "run.json")) as f:
            run = json.load(f)
    except (OSError, ValueError):
        run = {}
    return found, run


# -- figures ------------------------------------------------------------------------


class Figures:
    """PNG files in `directory`, referenced from report.md by `rel` paths."""

    def __init__(self, directory: str, rel: str) -> None:
        self.directory = directory
        self.rel = rel
        self.error = ""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            self.plt: Any = plt
        except ImportError as e:
            self.plt = None
            self.error = f"no figures: matplotlib is missing ({e}); /opt/mmbatch/bin/pip install matplotlib"
        if self.plt is not None:
            os.makedirs(directory, exist_ok=True)
            for name in FIGURE_NAMES:  # a figure this run does not draw must not linger from an earlier one
                try:
                    os.unlink(os.path.join(directory, f"{name}.png"))
                except FileNotFoundError:
                    pass

    def ratio_plot(self, name: str, title: str, panels: Sequence[Tuple[Any, ...]],
                   ylabel: str = "ratio to baseline (1.0 = baseline)") -> str:
        """Grouped bars: one panel per (subtitle, x labels, {series: ratios}[, goal ratio]); a line at 1.0."""
        if self.plt is None:
            return ""
        plt = self.plt
        most = max(len(p[1]) for p in panels)
        if most > 4:  # many groups: panels one above the other, wide enough for the labels
            fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.4, 1.1 * most + 1.5), 3.6 * len(panels)),
                                     squeeze=False)
            axes_list = [row[0] for row in axes]
        else:
            fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
            axes_list = list(axes[0])
        for ax, panel in zip(axes_list, panels):
            subtitle, labels, series = panel[:3]
            goal = panel[3] if len(panel) > 3 else None
            n = max(1, len(series))
            width = 0.8 / n
            for k, (label, values) in enumerate(series.items()):
                xs = [i + (k - (n - 1) / 2) * width for i in range(len(values))]
                ys = [v if isinstance(v, (int, float)) else 0.0 for v in values]
                bars = ax.bar(xs, ys, width=width * 0.95, label=label)
                for b, v in zip(bars, values):  # a missing value is an empty bar labelled n/a, never a ratio
                    ax.annotate(fmt_ratio(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                                va="bottom", fontsize=7)
            ax.axhline(1.0, color="black", linewidth=0.8)
            if goal is not None:
                ax.axhline(goal, color="red", linestyle="--", linewidth=0.8, label=f"goal {goal:g}")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize=8)
            ax.set_title(subtitle, fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path = os.path.join(self.directory, f"{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return f"![{title}]({self.rel}/{name}.png)"

    def incremental_plot(self, name: str, title: str, pcts: List[float], server: List[float],
                         uploaded: List[float]) -> str:
        if self.plt is None:
            return ""
        plt = self.plt
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        xs = list(range(len(pcts)))
        w = 0.27
        for off, label, vals in ((-w, "at the server", server), (0, "checkpointer bytes_uploaded", uploaded),
                                 (w, "goal: changed + 5%", [p / 100 + 0.05 for p in pcts])):
            bars = ax.bar([x + off for x in xs], [v * 100 for v in vals], width=w * 0.95, label=label,
                          hatch="//" if off > 0 else None, alpha=0.5 if off > 0 else 1.0)
            for b, v in zip(bars, vals):
                ax.annotate(f"{v:.0%}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{p:g}% changed" for p in pcts])
        ax.set_ylabel("second checkpoint, % of the full upload", fontsize=8)
        ax.axhline(100, color="black", linewidth=0.8)
        ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        fig.tight_layout()
        path = os.path.join(self.directory, f"{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return f"![{title}]({self.rel}/{name}.png)"


# -- sections -------------------------------------------------------------------------


def passthrough(d: Dict, figs: Figures) -> Section:
    s = Section("Passthrough overhead (mmbatch-runtime vs runc)")
    dr, sc = d["docker_run"], d["state_call"]
    n_pairs = dr["runc"]["n"]
    state_ratio = sc["mmbatch"]["median"] / sc["runc"]["median"] if sc["runc"]["median"] else None
    s.add(*table(["measure", "runc (baseline)", "mmbatch", "ratio", "also"], [
        [f"`docker run --rm true`, median ms ({n_pairs} alternated pairs)", f"{dr['runc']['median'] * 1000:.1f}",
         f"{dr['mmbatch']['median'] * 1000:.1f}", fmt_ratio(d["docker_run_ratio_median"]), ""],
        [f"runtime `state` call, median ms ({sc['runc']['n']} runs)", f"{sc['runc']['median'] * 1000:.2f}",
         f"{sc['mmbatch']['median'] * 1000:.2f}", fmt_ratio(state_ratio),
         f"interpreter floor `python -I -S -c pass`: {d['floor_ms']:.2f} ms"],
    ]))
    s.add("", f"Per-call overhead (mmbatch median minus runc median) {d['per_call_overhead_ms']:.2f} ms; the Python "
              f"interpreter's own start, the floor any Python runtime pays, {d['floor_ms']:.2f} ms; overhead minus "
              f"floor {d['overhead_minus_floor_ms']:.2f} ms (below 0: within the noise of the medians).")
    s.add("", figs.ratio_plot("passthrough", "Passthrough: mmbatch / runc", [
        ("docker run --rm true", ["docker run"], {"mmbatch / runc": [d["docker_run_ratio_median"]]}, 1.10),
        ("runtime state call", ["state"], {"mmbatch / runc": [state_ratio],
                                           "python floor / runc": [d["floor_ms"] / 1000 / sc["runc"]["median"]]}),
    ]))
    s.goals += [
        Goal("docker run through mmbatch / runc", fmt_ratio(d["docker_run_ratio_median"]), "<= 1.10x",
             d["docker_run_ratio_median"] <= 1.10),
        Goal("runtime call overhead minus interpreter floor", f"{d['overhead_minus_floor_ms']:.2f} ms", "<= 2 ms",
             d["overhead_minus_floor_ms"] <= 2.0),
    ]
    return s


def _freeze_rows(ck: Optional[Dict], pm: Optional[Dict]) -> List[Dict]:
    """One row per (staging, RSS, rootfs) with mmbatch and, by RSS, Podman, each against its own runc."""
    rows: List[Dict] = []
    podman_by_rss = {r["rss_mib"]: r for r in (pm or {}).get("results", [])}
    for r in (ck or {}).get("results", []):
        runs = r.get("runs", {})
        row = {"label": f"{r['rss_mib']} MiB" + (f" + {r['rootfs_mib']} MiB rootfs" if r["rootfs_mib"] else "")
               + (f" ({r['staging']})" if r["staging"] != "disk" else ""),
               "rss": r["rss_mib"], "runc_freeze": r["runc_freeze"], "mmbatch_freeze": r["mmbatch_freeze"],
               "runc_wall": r["runc_wall"], "mmbatch_wall": r["mmbatch_wall"],
               "mmbatch_freeze_ratio": pairwise(runs.get("mmbatch", []), runs.get("runc", []), "freeze")
               if runs else r.get("freeze_ratio"),
               "mmbatch_wall_ratio": pairwise(runs.get("mmbatch", []), runs.get("runc", []), "wall")
               if runs else r["mmbatch_wall"] / r["runc_wall"]}
        p = podman_by_rss.get(r["rss_mib"]) if r["staging"] == "disk" and not r["rootfs_mib"] else None
        if p:
            row.update(podman_runc_freeze=p["runc_freeze"], podman_freeze=p["podman_freeze"],
                       podman_runc_wall=p["runc_wall"], podman_wall=p["podman_wall"],
                       podman_freeze_ratio=p["freeze_ratio"], podman_wall_ratio=p["wall_ratio"])
        rows.append(row)
    seen = {r["rss"] for r in rows}
    for rss, p in sorted(podman_by_rss.items()):
        if rss not in seen:
            rows.append({"label": f"{rss} MiB", "rss": rss, "podman_runc_freeze": p["runc_freeze"],
                         "podman_freeze": p["podman_freeze"], "podman_runc_wall": p["runc_wall"],
                         "podman_wall": p["podman_wall"], "podman_freeze_ratio": p["freeze_ratio"],
                         "podman_wall_ratio": p["wall_ratio"]})
    return rows


def podman_note(pm: Optional[Dict]) -> List[str]:
    if pm is None:
        return ["Podman (peer): not measured in this run (bench/podman.py did not run)."]
    out: List[str] = []
    if pm.get("error"):
        out = ["Podman (peer) could not be measured here" + (" in full (what it measured before is below)"
                                                              if pm.get("results") else "")
               + "; its exact error is the result:", "", "```", pm["error"].strip()[-3000:], "```", ""]
    v = pm.get("versions")
    if not v:
        return out
    return out + [f"Podman (peer): {v.get('podman', '?')}, OCI runtime {v.get('oci_runtime', '?')}, "
            f"CRIU on PATH {v.get('criu_on_path', '?')}, CRIU in its dump.log {pm.get('criu_used', '?')}, "
            f"cgroups {v.get('cgroups', '?')}; export compressed with "
            f"`{pm.get('compress')}` (Podman's default is zstd); `podman run {' '.join(pm.get('run_flags', []))}`."]


def checkpoint(ck: Optional[Dict], pm: Optional[Dict], figs: Figures) -> Section:
    s = Section("Freeze and checkpoint time by memory size (mmbatch and Podman vs bare runc)")
    rows = _freeze_rows(ck, pm)
    fill = (ck or pm or {}).get("fill", "rotated")
    s.add("The job is a Python process holding RSS MiB "
          + ("of random data (`--fill random`: incompressible)" if fill == "random"
             else "made of 7 rotations of one random MiB (`--fill rotated`: compressible and deduplicable)")
          + ", printing any gap over 20 ms in a 2 ms timestamp loop: the *freeze* is the largest gap the job "
            "itself saw during the operation; *wall* is the whole command (mmbatch: pause, dump, rootfs diff, "
            "resume, write to the local store; Podman: `podman container checkpoint --leave-running --export`; "
            "runc: `runc checkpoint --leave-running` to the same disk). Each side is alternated with a bare runc "
            "checkpoint of the same container (mmbatch: the Docker container; Podman: the Podman container); "
            "ratios are medians of the pairwise ratios.", "")
    s.add(*podman_note(pm), "")
    if rows:
        s.add(*table(
            ["job", "runc freeze s", "mmbatch freeze s", "ratio", "Podman freeze s (its runc)", "ratio",
             "runc wall s", "mmbatch wall s", "ratio", "Podman wall s (its runc)", "ratio"],
            [[r["label"], fmt_s(r.get("runc_freeze"), 3), fmt_s(r.get("mmbatch_freeze"), 3),
              fmt_ratio(r.get("mmbatch_freeze_ratio")),
              f"{fmt_s(r.get('podman_freeze'), 3)} ({fmt_s(r.get('podman_runc_freeze'), 3)})"
              if "podman_freeze" in r else "", fmt_ratio(r.get("podman_freeze_ratio")) if "podman_freeze" in r else "",
              fmt_s(r.get("runc_wall")), fmt_s(r.get("mmbatch_wall")), fmt_ratio(r.get("mmbatch_wall_ratio")),
              f"{fmt_s(r.get('podman_wall'))} ({fmt_s(r.get('podman_runc_wall'))})" if "podman_wall" in r else "",
              fmt_ratio(r.get("podman_wall_ratio")) if "podman_wall" in r else ""] for r in rows]))
        labels = [r["label"].replace(" + ", "\n+ ").replace(" (", "\n(") for r in rows]
        s.add("", figs.ratio_plot("checkpoint", "Checkpoint of a running job: ratio to bare runc checkpoint", [
            ("freeze the job sees", labels, {"mmbatch / runc": [r.get("mmbatch_freeze_ratio") for r in rows],
                                             "Podman / runc": [r.get("podman_freeze_ratio") for r in rows]}),
            ("wall time of the command", labels, {"mmbatch / runc": [r.get("mmbatch_wall_ratio") for r in rows],
                                                  "Podman / runc": [r.get("podman_wall_ratio") for r in rows]}),
        ]))
    return s


def restore(ck: Optional[Dict], pm: Optional[Dict], figs: Figures) -> Section:
    s = Section("Restore time (mmbatch and Podman vs bare runc restore)")
    s.add("mmbatch: restore-on-create inside the runtime's `create` (fetch from the local store, verify, rootfs "
          "diff, `runc restore`: the `restore` event's seconds), and the whole `docker run` beside it. Podman: the "
          "whole `podman container restore --import` of its export into a new container. Baseline: a bare "
          "`runc restore` of the same job from images on local disk (a plain runc bundle of the same image), "
          "alternated with each side; ratios are medians of the pairwise ratios.", "")
    mm = {r["rss_mib"]: r for r in (ck or {}).get("restores", [])}
    pp = {r["rss_mib"]: r for r in (pm or {}).get("restores", [])}
    sizes = sorted(set(mm) | set(pp))
    if not sizes:
        s.add("No restore results in this run.")
        return s
    rows = []
    for rss in sizes:
        m, p = mm.get(rss), pp.get(rss)
        rows.append([f"{rss} MiB",
                     fmt_s(m["runc_restore"]) if m else "", fmt_s(m["mmbatch_restore"]) if m else "",
                     fmt_ratio(m["ratio"]) if m else "", fmt_s(m.get("docker_run")) if m else "",
                     fmt_ratio(m["docker_run"] / m["runc_restore"]) if m and m.get("docker_run") else "",
                     f"{fmt_s(p['podman_restore'])} ({fmt_s(p['runc_restore'])})" if p else "",
                     fmt_ratio(p["ratio"]) if p else ""])
    s.add(*table(["job", "runc restore s", "mmbatch restore s", "ratio", "whole docker run s", "ratio",
                  "Podman restore --import s (its runc)", "ratio"], rows))
    labels = [f"{rss} MiB" for rss in sizes]
    s.add("", figs.ratio_plot("restore", "Restore: ratio to bare runc restore", [
        ("restore", labels, {
            "mmbatch restore-on-create / runc": [mm[r]["ratio"] if r in mm else None for r in sizes],
            "mmbatch whole docker run / runc": [mm[r]["docker_run"] / mm[r]["runc_restore"]
                                                if r in mm and mm[r].get("docker_run") else None for r in sizes],
            "Podman restore --import / runc": [pp[r]["ratio"] if r in pp else None for r in sizes]}),
    ]))
    return s


def incremental(d: Dict, figs: Figures) -> Section:
    s = Section("Incremental checkpoint bytes")
    res = d["results"]
    s.add(f"A {d['mib']} MiB job of random data (Docker, runtime mmbatch) is checkpointed to SeaweedFS S3 on "
          f"127.0.0.1, then, for each fraction, rewrites that share of its buffer in scattered "
          f"{d.get('block_mib', 1)} MiB blocks and is checkpointed again. Bytes of the second checkpoint as a share "
          f"of the full (first) one, counted at the server (growth of the store's prefix) and by the checkpointer "
          f"(`bytes_uploaded`); store chunk size {d['chunk_size'] // 1024} KiB; medians of {d['rounds']} rounds "
          f"(new job each, fraction order alternated).", "")
    s.add(*table(["changed", "MiB rewritten", "full upload MiB (server)", "second checkpoint MiB (server)",
                  "of full (server)", "bytes_uploaded MiB", "of full (bytes_uploaded)", "goal", "met"],
                 [[f"{r['pct']:g}%", f"{r['blocks_rewritten']:g}", f"{r['full_server_bytes'] / MiB:.1f}",
                   f"{r['server_bytes'] / MiB:.1f}", f"{r['server_ratio']:.1%}", f"{r['bytes_uploaded'] / MiB:.1f}",
                   f"{r['uploaded_ratio']:.1%}", f"<= {r['goal_ratio']:.0%}", yes_no(r["goal_met"])] for r in res]))
    s.add("", figs.incremental_plot("incremental", f"Second checkpoint of a {d['mib']} MiB job vs the full upload",
                                    [r["pct"] for r in res], [r["server_ratio"] for r in res],
                                    [r["uploaded_ratio"] for r in res]))
    for r in res:
        s.goals.append(Goal(f"incremental bytes, {r['pct']:g}% of {d['mib']} MiB changed",
                            f"{max(r['server_ratio'], r['uploaded_ratio']):.1%} of full",
                            f"<= {r['goal_ratio']:.0%}", r["goal_met"]))
    return s


def s3_throughput(d: Dict, figs: Figures) -> Section:
    s = Section("S3 throughput (mmbatch repository vs plain boto3)")
    med, mbps, ratio = d["median_seconds"], d["median_mib_per_s"], d["ratio_mmbatch_over_boto3_seconds"]
    up = pairwise(d["samples"]["mmbatch"], d["samples"]["boto3"], "upload") if "samples" in d else ratio["upload"]
    down = pairwise(d["samples"]["mmbatch"], d["samples"]["boto3"], "download") if "samples" in d else \
        ratio["download"]
    s.add(f"A {d['bytes'] / MiB:.0f} MiB checkpoint ({d['files']} files) to {d['endpoint']}, SSE {d['sse']}, "
          f"{d['rounds']} alternated rounds. mmbatch: chunked, SHA-256 per chunk, packs, parallel PUTs "
          f"(chunk {d['store']['chunk_size'] // 1024} KiB, parallel {d['store']['parallel']}), fetch verified; "
          f"baseline: boto3 `upload_file`/`download_file` with default settings.", "")
    s.add(*table(["direction", "boto3 s", "boto3 MiB/s", "mmbatch s", "mmbatch MiB/s", "time ratio"], [
        [dr, fmt_s(med["boto3"][dr]), f"{mbps['boto3'][dr]:.0f}", fmt_s(med["mmbatch"][dr]),
         f"{mbps['mmbatch'][dr]:.0f}", fmt_ratio(r)] for dr, r in (("upload", up), ("download", down))]))
    s.add("", figs.ratio_plot("s3_throughput", "S3: mmbatch time / boto3 time", [
        (f"{d['bytes'] / MiB:.0f} MiB checkpoint", ["upload", "download"], {"mmbatch / boto3": [up, down]})]))
    return s


def interruption(d: Dict, s3: Optional[Dict], figs: Figures) -> Section:
    s = Section("Spot interruption fan-out")
    # The baseline must come from the same run (a stale S3 result measured another machine state).
    rate = s3["median_mib_per_s"]["boto3"]["upload"] if s3 and s3.get("run_id") == d.get("run_id") else None
    s.add("Time from the interruption notice (fake IMDS) to the last final checkpoint committed, for N jobs "
          f"of {d['results'][0]['mib'] if d['results'] else '?'} MiB each on a private node (its own dockerd and "
          f"mmbatchd), store {'SeaweedFS S3 on 127.0.0.1' if d.get('store') == 's3' else d.get('store')}. "
          "Baseline: the time plain boto3 needs just to upload the same bytes at the rate the S3 bench measured "
          "in this run" + (f" ({rate:.0f} MiB/s)" if rate else " (not measured in this run: no ratio)") + ".",
          "A single run per count is no median: `--repeat N` takes the median of N runs, each on a fresh node."
          if all(len(r.get("samples", [])) <= 1 for r in d["results"]) else "", "")
    rows, ratios, labels = [], [], []
    for r in d["results"]:
        base = r["containers"] * r["mib"] / rate if rate else None
        ratio = r["seconds"] / base if base else None
        ratios.append(ratio)
        labels.append(f"{r['containers']} x {r['mib']} MiB")
        rows.append([labels[-1], fmt_s(r["seconds"], 1), ", ".join(f"{x:.1f}" for x in r.get("samples", [])) or "",
                     fmt_s(base, 1), fmt_ratio(ratio), "yes" if r["all_committed"] else "**no**"])
    s.add(*table(["jobs", "notice to last commit s (median)", "runs s", "boto3 upload of the same bytes s",
                  "ratio", "all committed"], rows))
    if any(x is not None for x in ratios):
        s.add("", figs.ratio_plot("interruption", "Fan-out: time / plain upload time of the same bytes",
                                  [("all final checkpoints committed", labels, {"mmbatch / boto3 upload": ratios})]))
    for r in d["results"]:
        if r["containers"] == 10 and r["mib"] == 512:
            s.goals.append(Goal("10 x 512 MiB final checkpoints after the notice", f"{r['seconds']:.1f} s",
                                "<= 90 s", r["seconds"] <= 90 and r["all_committed"]))
    return s


# -- the report -----------------------------------------------------------------------


def machine_section(results: Dict[str, Dict], run: Dict) -> List[str]:
    m: Dict[str, str] = {}
    for d in results.values():
        m.update({k: v for k, v in d.get("machine", {}).items() if k not in m})
    pm = results.get("podman", {}).get("versions", {})
    rows = [["kernel", m.get("kernel", "?")], ["CPU", f"{m.get('cpus', '?')} x {m.get('cpu_model', '?')}"],
            ["memory", f"{m.get('memory_gib', '?')} GiB"], ["Python", m.get("python", "?")],
            ["runc", m.get("runc", "?")], ["CRIU", f"{m.get('criu', '?')} ({m.get('criu_path', '?')})"],
            ["Docker", m.get("docker", "?")]]
    if pm:
        rows += [["Podman", pm.get("podman", "?")], ["Podman's OCI runtime", pm.get("oci_runtime", "?")]]
    for k in ("seaweedfs", "load_before", "load_after"):
        if run.get(k):
            rows.append([{"seaweedfs": "SeaweedFS", "load_before": "load average at start",
                          "load_after": "load average at end"}[k], run[k]])
    return table(["", ""], rows)


def stale_results(results: Dict[str, Dict], run: Dict) -> List[str]:
    """Benches whose result is not from run.json's run (an earlier run, or a bench run by hand)."""
    return [n for n, d in results.items() if run.get("run_id") and d.get("run_id") != run.get("run_id")]


def run_section(run: Dict, results: Dict[str, Dict]) -> List[str]:
    out: List[str] = []
    if run.get("benches"):
        rows = []
        for b in run["benches"]:
            status = b["status"]
            if status == "ok" and results.get(b["name"], {}).get("error"):
                status = "ok, with an error recorded as its result (see its section)"
            rows.append([b["name"], status, f"{b.get('seconds', 0):.0f}", "`" + " ".join(b.get("argv", [])) + "`"])
        out += table(["bench", "status", "seconds", "arguments"], rows)
        for b in run["benches"]:
            if b["status"] != "ok" and b.get("error_tail"):
                out += ["", f"{b['name']} ({b['status']}), last lines of its log:", "", "```",
                        b["error_tail"].strip(), "```"]
    stale = stale_results(results, run)
    if stale:
        out += ["", f"Stale (from an earlier run, not this one's baseline): {', '.join(stale)}."]
    return out


def build(results_dir: str = RESULTS, out: str = REPORT) -> str:
    """Write `out` (and its figures beside it) from `results_dir`; returns the path."""
    results, run = load(results_dir)
    figs = Figures(os.path.join(os.path.dirname(os.path.abspath(out)), FIGURES), FIGURES)
    sections: List[Section] = []
    renderers: List[Tuple[str, Callable[[], Section]]] = [
        ("passthrough", lambda: passthrough(results["passthrough"], figs)),
        ("checkpoint", lambda: checkpoint(results.get("checkpoint"), results.get("podman"), figs)),
        ("restore", lambda: restore(results.get("checkpoint"), results.get("podman"), figs)),
        ("incremental", lambda: incremental(results["incremental"], figs)),
        ("s3_throughput", lambda: s3_throughput(results["s3_throughput"], figs)),
        ("interruption", lambda: interruption(results["interruption"], results.get("s3_throughput"), figs)),
    ]
    needs = {"checkpoint": ["checkpoint", "podman"], "restore": ["checkpoint", "podman"]}
    stale = stale_results(results, run)
    missing: List[str] = []
    for key, render in renderers:
        if not any(n in results for n in needs.get(key, [key])):
            missing.append(key)
            continue
        try:
            sec = render()
        except (KeyError, IndexError, AttributeError, TypeError, ValueError, ZeroDivisionError) as e:
            sec = Section(key)
            sec.add(f"Could not render the results of {key}: {type(e).__name__}: {e}")
        old = [n for n in needs.get(key, [key]) if n in stale]
        if old:
            sec.title += " (stale)"
            sec.lines[:0] = [f"*Stale: the results of {', '.join(old)} are from an earlier run, not this one.*", ""]
            for g in sec.goals:
                g.measure += " (stale)"
        sections.append(sec)

    mode = run.get("mode", "")
    lines = ["# mmbatch benchmark report", ""]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.get("finished", time.time())))
    lines.append(f"Generated {when}" + (f" by `{run['command']}`" if run.get("command") else " by bench/report.py")
                 + (f" ({mode} mode, {run['seconds'] / 60:.1f} min)" if run.get("seconds") else "") + ".")
    lines += ["", "Every ratio is mmbatch (or the peer, Podman) over its baseline, measured in the same run on the "
                  "same machine with runs alternated (A B, B A, ...); a ratio below 1.0 is faster than the baseline. "
                  "Figures plot the ratios; tables give the medians in seconds or bytes beside them.", ""]
    if mode == "smoke":
        lines += ["**Smoke run (`--smoke`): tiny sizes, one run each, to check the wiring. These numbers mean "
                  "nothing; run `bench/run --quick` or `bench/run` for a report.**", ""]
    load_before = run.get("load_before", "")
    if load_before and float(load_before.split()[0]) > 0.5:
        lines += [f"*The machine was not idle at the start (load average {load_before}): timings may be "
                  "inflated by other work.*", ""]
    failed = [b for b in run.get("benches", []) if b.get("status") != "ok"]
    if failed:
        lines += ["**Failed in this run: " + ", ".join(f"{b['name']} ({b['status']})" for b in failed)
                  + "; the end of each log is under \"This run\".**", ""]
    erred = [n for n, d in results.items() if d.get("error") and n not in stale]
    if erred:
        lines += [f"**Recorded an error as its result: {', '.join(erred)} (see its section).**", ""]
    if figs.error:
        lines += [f"*{figs.error}*", ""]
    lines += ["## Machine and versions", ""] + machine_section(results, run) + [""]
    goals = [g for sec in sections for g in sec.goals]
    if goals:
        lines += ["## Goals", ""] + table(["measure", "result", "goal", "met"],
                                          [[g.measure, g.value, g.goal, yes_no(g.met)] for g in goals]) + [""]
    for i, sec in enumerate(sections, start=1):
        lines += [f"## {i}. {sec.title}", ""] + sec.lines + [""]
    if missing:
        lines += [f"Not in this report (no results): {', '.join(missing)}.", ""]
    lines += ["## This run", ""] + (run_section(run, results) or ["(no run.json: bench/report.py run alone)"]) + [""]
    lines += ["Regenerate: `bench/run --quick` (about 10 minutes) or `bench/run` (full); `bench/report.py` "
              "rebuilds this file from bench/results/ alone. See docs/bench.md.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, out)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=RESULTS, help="the results directory (default bench/results)")
    ap.add_argument("--out", default=REPORT, help="the report (figures go to figures/ beside it)")
    args = ap.parse_args(argv)
    print(build(args.results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

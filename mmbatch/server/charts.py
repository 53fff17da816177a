"""Charts as inline SVG, drawn on the server: no script, no external asset.

Only presentation attributes (fill, stroke, font-size), never `style`, so
the pages' Content-Security-Policy can forbid inline styles.
"""

from __future__ import annotations

from html import escape
from typing import Callable, List, Optional, Sequence, Tuple

COLORS = ("#2b6cb0", "#2f855a", "#c05621", "#6b46c1", "#b7791f")
FONT = 'font-family="sans-serif" font-size="12"'


def _fmt(v: float) -> str:
    return f"{v:g}" if v == int(v) else f"{v:.2f}"


def hbars(items: Sequence[Tuple[str, Optional[float]]], title: str, *, max_value: Optional[float] = None,
          fmt: Callable[[float], str] = _fmt, width: int = 520, color: str = COLORS[0]) -> str:
    """Horizontal bars, one per (label, value); None is drawn as "n/a"."""
    row, label_w, top = 24, 170, 28
    height = top + row * max(1, len(items)) + 8
    values = [v for _, v in items if v is not None]
    top_value = max_value if max_value is not None else max(values, default=0) or 1.0
    bar_w = width - label_w - 70
    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<text x="0" y="16" {FONT} font-weight="bold" fill="#1a202c">{escape(title)}</text>']
    if not items:
        out.append(f'<text x="0" y="{top + 14}" {FONT} fill="#718096">no data yet</text>')
    for i, (label, value) in enumerate(items):
        y = top + i * row
        short = label if len(label) <= 24 else label[:23] + "…"
        out.append(f'<text x="0" y="{y + 15}" {FONT} fill="#2d3748">{escape(short or "(none)")}</text>')
        if value is None:
            out.append(f'<text x="{label_w}" y="{y + 15}" {FONT} fill="#718096">n/a</text>')
            continue
        w = 0 if top_value <= 0 else max(0.0, min(1.0, value / top_value)) * bar_w
        out.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="16" fill="{color}"/>')
        out.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" {FONT} fill="#2d3748">{escape(fmt(value))}</text>')
    out.append("</svg>")
    return "".join(out)


def columns(categories: Sequence[str], series: List[Tuple[str, Sequence[float]]], title: str, *,
            width: int = 720, height: int = 220) -> str:
    """Grouped vertical bars: one group per category, one bar per series, with a legend."""
    left, top, bottom = 34, 40, 36
    plot_h = height - top - bottom
    n = max(1, len(categories))
    group_w = (width - left) / n
    bar_w = max(2.0, (group_w - 6) / max(1, len(series)))
    peak = max((v for _, vals in series for v in vals), default=0) or 1
    out = [f'<svg class="chart" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
           f'<text x="0" y="16" {FONT} font-weight="bold" fill="#1a202c">{escape(title)}</text>']
    x = left
    for i, (name, _vals) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        out.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="33" {FONT} fill="#2d3748">{escape(name)}</text>')
        x += 24 + 8 * len(name)
    base = top + plot_h
    out.append(f'<line x1="{left}" y1="{base}" x2="{width}" y2="{base}" stroke="#a0aec0"/>')
    out.append(f'<text x="0" y="{top + 10}" {FONT} fill="#718096">{_fmt(peak)}</text>')
    out.append(f'<text x="0" y="{base}" {FONT} fill="#718096">0</text>')
    for ci, cat in enumerate(categories):
        gx = left + ci * group_w + 3
        for si, (name, vals) in enumerate(series):
            v = vals[ci] if ci < len(vals) else 0
            h = plot_h * v / peak
            out.append(f'<rect x="{gx + si * bar_w:.1f}" y="{base - h:.1f}" width="{bar_w - 1:.1f}" '
                       f'height="{h:.1f}" fill="{COLORS[si % len(COLORS)]}"><title>{escape(cat)} {escape(name)}: '
                       f'{_fmt(v)}</title></rect>')
        if n <= 16 and (ci % max(1, n // 8) == 0):
            out.append(f'<text x="{gx:.1f}" y="{base + 16}" font-family="sans-serif" font-size="10" '
                       f'fill="#4a5568">{escape(cat[5:] if len(cat) == 10 else cat)}</text>')
    out.append("</svg>")
    return "".join(out)


def timeline(attempts: Sequence[dict], events: Sequence[dict], *, width: int = 720) -> str:
    """A job's attempts as bars over time, with its checkpoints (blue) and restores (green) as marks."""
    times = [t for a in attempts for t in (a.get("started_at"), a.get("ended_at")) if t]
    times += [e["time"] for e in events if isinstance(e.get("time"), (int, float)) and not isinstance(e["time"], bool)]
    row, left, top = 26, 110, 10
    height = top + row * max(1, len(attempts)) + 24
    out = [f'<svg class="chart" role="img" aria-label="attempts and events over time" '
           f'xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    if not times:
        out.append(f'<text x="0" y="20" {FONT} fill="#718096">no attempts yet</text></svg>')
        return "".join(out)
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1.0)
    plot_w = width - left - 10

    def xpos(t: float) -> float:
        return left + plot_w * (t - t0) / span

    rows = {}
    for i, a in enumerate(attempts):
        y = top + i * row
        rows[a.get("container_id")] = y
        start = a.get("started_at") or t0
        end = a.get("ended_at") or t1
        color = {"killed": "#c05621", "succeeded": "#2f855a", "oom": "#c53030"}.get(a.get("end_state") or "", "#718096")
        out.append(f'<text x="0" y="{y + 15}" {FONT} fill="#2d3748">attempt {escape(str(a.get("attempt") or i + 1))}'
                   f'</text>')
        out.append(f'<rect x="{xpos(start):.1f}" y="{y + 4}" width="{max(2.0, xpos(end) - xpos(start)):.1f}" '
                   f'height="14" fill="{color}" fill-opacity="0.35" stroke="{color}"/>')
    marks = {"checkpoint": "#2b6cb0", "restore": "#2f855a", "restore-fallback": "#c53030", "cold-start": "#718096"}
    for e in events:  # store records: any JSON value may stand where a string is expected
        kind = str(e.get("kind") or "")
        color = marks.get(kind)
        if color is None or not isinstance(e.get("time"), (int, float)) or isinstance(e.get("time"), bool):
            continue
        y = rows.get(str(e.get("container_id") or ""), top)
        out.append(f'<circle cx="{xpos(e["time"]):.1f}" cy="{y + 11}" r="5" fill="{color}">'
                   f'<title>{escape(kind)}</title></circle>')
    out.append(f'<text x="{left}" y="{height - 6}" {FONT} fill="#718096">{span:.0f} s from first to last record'
               f'</text></svg>')
    return "".join(out)

"""Progress bars for long transfers in the CLI: on stderr, and only when
stderr is a terminal (scripts and logs get nothing). The callback is
`progress(done_bytes, total_bytes)`, safe to call from upload threads, as
CheckpointRepository.commit and fetch do."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Callable, Optional

WIDTH = 30
MIN_REDRAW_SECONDS = 0.1


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(label: str, done: int, total: int, elapsed: float, width: int = WIDTH) -> str:
    """One line of a bar: `label [=====>    ]  42% 1.2 GiB/2.9 GiB 85.0 MiB/s`."""
    frac = min(1.0, done / total) if total > 0 else 0.0
    filled = int(frac * width)
    bar = "=" * filled + (">" if filled < width else "") + " " * max(0, width - filled - 1)
    rate = done / elapsed if elapsed > 0 else 0.0
    return (f"{label} [{bar}] {frac * 100:3.0f}% {human_bytes(done)}/{human_bytes(total)} "
            f"{human_bytes(rate)}/s")


class ProgressBar:
    """A redrawn line on a terminal; a no-op elsewhere."""

    def __init__(self, label: str, stream: Optional[IO[str]] = None, clock: Callable[[], float] = time.monotonic,
                 force: bool = False) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.enabled = force or _isatty(self.stream)
        self._lock = threading.Lock()
        self._t0 = clock()
        self._last_draw = float("-inf")
        self._drawn = False
        self._last = (0, 0)

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._last = (done, total)
            now = self.clock()
            if done < total and now - self._last_draw < MIN_REDRAW_SECONDS:
                return
            self._last_draw = now
            self.stream.write("\r" + render(self.label, done, total, now - self._t0) + "\x1b[K")
            self.stream.flush()
            self._drawn = True

    def close(self) -> None:
        """End the bar's line (if one was drawn)."""
        if self.enabled and self._drawn:
            with self._lock:
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

"""A progress line on stderr: the step, how far along, the time spent and an estimate of the time left.

No dependency: one line rewritten in place with a carriage return, only when stderr is a terminal (or when
asked for explicitly), so logs and pipes stay clean. On a terminal the line keeps ticking (time spent, time
left) once a second during a long step, so that a slow check or a neighbour search is never a silence.

    bar = Progress(total=7, label="analyze", enabled=None)   # None: on when stderr is a terminal
    for name in checks:
        bar.step(name)        # "analyze [3/7] drift · 4.1 s, about 5 s left"
        ...
    bar.done()
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


def wanted(enabled: bool | None, stream: TextIO | None = None) -> bool:
    """Whether to draw: `enabled` when given, else whether the stream (stderr) is a terminal."""
    if enabled is not None:
        return bool(enabled)
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


class Progress:
    """Steps 1..total of one phase, drawn on one line of `stream` (stderr by default).

    total : number of steps (None when unknown: no estimate).
    label : the phase ("analyze", "forward passes"...).
    enabled : True draws, False stays silent, None draws only when the stream is a terminal.
    unit : what a step counts, shown after the count ("epochs", "batches").
    """

    def __init__(self, total: int | None, label: str, *, enabled: bool | None = None, stream: TextIO | None = None,
                 unit: str = ""):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = wanted(enabled, self.stream)
        self.terminal = self.enabled and wanted(None, self.stream)
        self.count = 0
        self.start = time.perf_counter()
        self._width = 0
        self._last = 0.0
        self._lock = threading.Lock()
        self._current: tuple[str, int, float] | None = None  # (what, done, when it was said): redrawn by the ticker
        self._ticker: threading.Thread | None = None

    def step(self, what: str = "", *, advance: int = 1) -> None:
        """Say that step `count + 1` (named `what`) starts; `advance` steps are counted as done before it."""
        self.count += advance
        self._draw(what, done=self.count - 1)

    def update(self, done: int, what: str = "") -> None:
        """Say that `done` steps are done (for phases counted in batches or rows); drawn at most 10 times a
        second on a terminal, once a second elsewhere, and always on the last step."""
        self.count = done
        now = time.perf_counter()
        if now - self._last < (0.1 if self.terminal else 1.0) and done != self.total:
            return
        self._last = now
        self._draw(what, done=done)

    def done(self, what: str = "done") -> None:
        """End the line (with the total time)."""
        if not self.enabled:
            return
        with self._lock:
            self._current = None
            elapsed = time.perf_counter() - self.start
            self._write(f"{self.label}: {what} in {_seconds(elapsed)}", end="\n")

    def clear(self) -> None:
        """Erase a line in progress on a terminal (before an error message, or before another phase's line)."""
        with self._lock:
            self._current = None
            if self.terminal and self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
                self._width = 0

    def _draw(self, what: str, *, done: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._current = (what, done, time.perf_counter())
            self._render(*self._current)
            if self.terminal and self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="dataaudit-progress", daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        """Redraw the line once a second while a step runs; ends with the phase (done or clear)."""
        while True:
            time.sleep(1.0)
            with self._lock:
                if self._current is None:
                    self._ticker = None
                    return
                self._render(*self._current)

    def _render(self, what: str, done: int, said: float) -> None:
        now = time.perf_counter()
        elapsed = now - self.start
        count = f"[{self.count}/{self.total}{' ' + self.unit if self.unit else ''}]" if self.total else \
            f"[{self.count}{' ' + self.unit if self.unit else ''}]"
        text = f"{self.label} {count}{' ' + what if what else ''} · {_seconds(elapsed)}"
        if self.total and done > 0 and elapsed > 0.5:
            # the mean time of the steps done, for the steps left; the step under way counts as far as it went
            # (never below the steps after it), so the estimate does not grow while a long step runs
            per_step = (said - self.start) / done
            left = max(per_step * (self.total - done) - (now - said), per_step * (self.total - done - 1), 0.0)
            text += f", about {_seconds(left)} left"
        self._write(text, end="" if self.terminal else "\n")

    def _write(self, text: str, *, end: str) -> None:
        # a terminal gets one line rewritten in place; anything else (a forced log) one line per step
        pad = max(self._width - len(text), 0) if self.terminal else 0
        prefix = "\r" if self.terminal else ""
        self.stream.write(prefix + text + " " * pad + end)
        self.stream.flush()
        self._width = 0 if end else len(text)


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    minutes, seconds = divmod(int(round(s)), 60)
    return f"{minutes} min {seconds:02d} s"

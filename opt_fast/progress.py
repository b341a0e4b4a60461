"""Progress of long loops on stderr: tqdm's bar on a terminal; elsewhere (a log file, which a bar's ``\\r`` frames
would flood) a plain line at every tenth of the loop and at its end; nothing with ``OPT_FAST_PROGRESS=0``. Both show
the loop's steps/s and ETA; the trainer adds the last score and the whole run's ETA (``run_eta``)."""
from __future__ import annotations

import os
import sys
from time import perf_counter
from typing import Any

from tqdm import tqdm


def format_seconds(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """The part of tqdm's interface opt-fast uses (``update``, ``set_postfix``, a context manager), as plain lines."""

    def __init__(self, desc: str, total: int, initial: int = 0, unit: str = "step"):
        self.desc, self.total, self.n, self.unit = desc, total, initial, unit
        self.postfix = ""
        self.started, self.start_step = perf_counter(), initial
        self.next_line = self._next_tenth(initial)

    def _next_tenth(self, step: int) -> int:
        tenth = max(1, self.total // 10)
        return min((step // tenth + 1) * tenth, self.total)

    def update(self, steps: int = 1) -> None:
        self.n += steps
        if self.n >= self.next_line:
            rate = (self.n - self.start_step) / max(perf_counter() - self.started, 1e-9)
            eta = f", eta {format_seconds((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n // max(self.total, 1)}%), "
                  f"{rate:.1f} {self.unit}s/s{eta}{self.postfix}", file=sys.stderr, flush=True)
            self.next_line = self._next_tenth(self.n) if self.n < self.total else self.total + 1

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **values: Any) -> None:
        self.postfix = "".join(f", {key} {value}" for key, value in {**(ordered_dict or {}), **values}.items())

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def progress_bar(desc: str, total: int, initial: int = 0, unit: str = "step") -> tqdm | PlainProgress:
    """A bar on a terminal, plain lines elsewhere, nothing with ``OPT_FAST_PROGRESS=0``."""
    if os.environ.get("OPT_FAST_PROGRESS", "1") == "0":
        return tqdm(total=total, initial=initial, disable=True)
    if not sys.stderr.isatty():
        return PlainProgress(desc, total, initial, unit)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=True)

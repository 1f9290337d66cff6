"""Progress you can watch: long host work says what it is doing, in the form the reader needs.

* On a terminal, a countable piece of work is a bar with a rate and an ETA (tqdm), redrawn in
  place, and each new stage a line.
* Anywhere else (a pipe, a CI log) there is nothing to redraw: one line per state change —
  a stage begins, a step of a task finishes with what it found — and never the same line twice.
* Under ``--json``, or for a library caller that passed nothing, nothing at all: stdout holds the
  document, and stderr stays clean for the caller's own use.

The library reports through a :class:`Progress` it is given (:data:`SILENT` by default); the
CLI makes one with :func:`for_cli`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Literal

Mode = Literal["bar", "lines", "silent"]


class Task:
    """One countable piece of work in progress (see :meth:`Progress.task`)."""

    def __init__(self, progress: Progress, what: str, total: float | None, unit: str) -> None:
        self._progress = progress
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0.0
        self._bar = None
        if progress.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=what,
                unit=unit,
                file=progress.stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=0.2,
            )
        elif progress.mode == "lines":
            progress.line(f"{what}: started" + (f" ({_amount(total, unit)})" if total else ""))

    def advance(self, n: float = 1.0, note: str | None = None) -> None:
        """``n`` more units done; ``note`` says what this step found (a line of its own off a terminal)."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if note:
                self._bar.set_postfix_str(note[:60], refresh=False)
        elif self._progress.mode == "lines" and note:
            of = f"/{_count(self.total)}" if self.total else ""
            seconds = " s" if self.unit == "s" else ""
            self._progress.line(f"{self.what}: {_count(self.done)}{of}{seconds} {note}")

    def set_total(self, total: float) -> None:
        """The size of the work, once it is known (a search learns its budget as it starts)."""
        if self.total == total:
            return
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def set(self, done: float, note: str | None = None) -> None:
        """Progress as an absolute amount (e.g. seconds of a time budget used)."""
        self.advance(max(0.0, done - self.done), note)

    def close(self, summary: str | None = None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if summary and self._progress.mode != "silent":
            self._progress.line(f"{self.what}: {summary}")


class Progress:
    def __init__(self, mode: Mode = "silent", stream: IO[str] | None = None) -> None:
        self.mode: Mode = mode
        self.stream: IO[str] = stream if stream is not None else sys.stderr

    def line(self, message: str) -> None:
        if self.mode == "silent":
            return
        if self.mode == "bar":
            from tqdm import tqdm

            tqdm.write(f"… {message}", file=self.stream)  # above any bar being drawn
        else:
            self.stream.write(f"… {message}\n")
            self.stream.flush()

    def stage(self, message: str) -> None:
        """A new stage of the work begins ("converting to ONNX and checking parity")."""
        self.line(message)

    def warn(self, message: str) -> None:
        self.line(f"warning: {message}")

    @contextmanager
    def task(self, what: str, total: float | None, unit: str = "step") -> Iterator[Task]:
        """A countable piece of work: a bar on a terminal, a line per noted step elsewhere."""
        started = time.monotonic()
        task = Task(self, what, total, unit)
        try:
            yield task
        finally:
            task.close(f"done in {time.monotonic() - started:.1f} s")


SILENT = Progress("silent")


def for_cli(as_json: bool, stream: IO[str] | None = None) -> Progress:
    """What a command shows: nothing under ``--json``; bars on a terminal; lines elsewhere."""
    out = stream if stream is not None else sys.stderr
    if as_json:
        return Progress("silent", out)
    return Progress("bar" if _isatty(out) else "lines", out)


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _amount(total: float, unit: str) -> str:
    if unit == "s":
        return f"{_count(total)} s"
    return f"{_count(total)} {unit}" + ("" if total == 1 else "s")


def _count(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"

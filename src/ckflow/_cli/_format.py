"""What the ``ckflow`` command prints: times, durations, tables, failure one-liners and a status line.

Everything here is plain text for a terminal: aligned columns, local times,
no colour. Tables go to stdout; progress goes to stderr and is drawn only
when stderr is a terminal, so stdout stays clean for pipes.

What the command prints comes from the store (run ids, flow and task names,
failure messages) and may hold escape sequences that a terminal would obey:
``Console`` and ``StatusLine`` write every line through ``printable``, which
escapes control characters (ESC as ``\\x1b``). JSON output is left to ``json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import TextIO

    from pydantic import BaseModel

    from ckflow._failure import Failure

__all__ = [
    "CliError",
    "Console",
    "StatusLine",
    "Stopwatch",
    "cut",
    "failure_line",
    "fmt_duration",
    "fmt_time",
    "parse_duration",
    "printable",
    "table",
]

#: a cell longer than its column's cap is cut and ends with this
ELLIPSIS: Final = "…"
_UNITS: Final = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
#: C0 controls (ESC, BEL, CR, ...), DEL, C1 controls and lone surrogates (which no terminal encoding can write)
_UNPRINTABLE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with its control characters and lone surrogates written as escapes: ESC as ``\\x1b``."""
    return _UNPRINTABLE.sub(_escape, text)


class CliError(Exception):
    """A problem the command reports as ``ckflow: error: <message>`` with exit status 1."""


class Console:
    """The command's two streams: results on ``out``, progress and summaries on ``err``."""

    __slots__ = ("err", "json", "out")

    def __init__(self, out: TextIO, err: TextIO, *, json: bool) -> None:
        self.out = out
        self.err = err
        #: machine output: JSON on stdout, nothing else there
        self.json = json

    @property
    def progress(self) -> bool:
        """True when stderr is a terminal, where a live status line makes sense."""
        return _isatty(self.err)

    @property
    def width(self) -> int | None:
        """The terminal's width when stdout is one (tables are then fitted to it), else None."""
        return shutil.get_terminal_size((100, 24)).columns if _isatty(self.out) else None

    def print(self, text: str = "") -> None:
        """A line of results, on stdout."""
        print(printable(text), file=self.out, flush=True)

    def emit(self, value: Any) -> None:
        """One JSON document (a line of JSON lines) on stdout."""
        print(json.dumps(value, ensure_ascii=False), file=self.out, flush=True)

    def emit_model(self, model: BaseModel) -> None:
        """A pydantic record as one line of JSON."""
        self.emit(model.model_dump(mode="json"))

    def note(self, text: str) -> None:
        """A summary or a hint, on stderr (always shown)."""
        print(printable(text), file=self.err, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


# -- times and durations -------------------------------------------------------------


def fmt_time(ts: float | None, *, ms: bool = False) -> str:
    """Wall-clock seconds as local ``YYYY-MM-DD HH:MM:SS`` (with milliseconds if asked); ``-`` for None."""
    if ts is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(ts)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d}" if ms else text


def fmt_duration(seconds: float | None) -> str:
    """Seconds for humans: ``850ms``, ``12.3s``, ``4m05s``, ``3h07m``, ``2d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3_600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3_600}h{whole % 3_600 // 60:02d}m"
    return f"{whole // 86_400}d{whole % 86_400 // 3_600:02d}h"


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s``, ``1w`` or a sum such as ``1h30m``, in seconds (for argparse)."""
    spec = text.strip().lower()
    if not spec or _DURATION.sub("", spec):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write a number with a unit, e.g. 30d, 12h, 90m, 3600s or 1h30m."
        )
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION.findall(spec))


# -- failures and tables ----------------------------------------------------------------


def failure_line(failure: Failure | None) -> str:
    """A failure on one line: ``ValueError: disk is full``, prefixed by what failed if not the execute."""
    if failure is None:
        return ""
    exc_type = failure.exc_type.rsplit(".", 1)[-1]
    message = " ".join(failure.message.split())
    text = f"{exc_type}: {message}" if message else exc_type
    if failure.kind == "cancelled":
        return f"cancelled: {message}" if message else "cancelled"
    if failure.kind != "execute":
        return f"{failure.kind}: {text}"
    return text


def cut(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis if anything was cut."""
    if width < 1:
        return ""
    return text if len(text) <= width else text[: width - 1] + ELLIPSIS


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    caps: Sequence[int | None] | None = None,
    width: int | None = None,
) -> list[str]:
    """Rows under headers in aligned columns, two spaces apart.

    ``caps`` bounds a column's width (None: never cut, for ids one copies);
    with ``width`` (a terminal's), the last column is cut to fit the line.
    """
    body = [list(row) for row in rows]
    limits = list(caps) if caps is not None else [None] * len(headers)
    for row in body:
        for i, cell in enumerate(row):
            limit = limits[i]
            if limit is not None:
                row[i] = cut(cell, limit)
    widths = [len(h) for h in headers]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *body]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        last = row[-1]
        if width is not None:
            used = sum(widths[:-1]) + 2 * (len(widths) - 1)
            last = cut(last, max(width - used, 8))
        lines.append("  ".join([*cells, last]).rstrip())
    return lines


# -- progress ---------------------------------------------------------------------------


class StatusLine:
    """One line at the bottom of a terminal, redrawn in place; lines printed above it scroll up.

    Everything it draws goes to stderr, and only when stderr is a terminal:
    elsewhere it draws nothing at all. From its first ``show()`` until it is
    closed, ``active()`` returns it, so that a log line can clear it first
    (``_main`` does so for ckflow's structlog output).
    """

    __slots__ = ("_console", "_shown", "enabled")

    def __init__(self, console: Console) -> None:
        self._console = console
        self.enabled = console.progress
        self._shown = False

    @staticmethod
    def active() -> StatusLine | None:
        """The status line being shown on the terminal now, if any."""
        return _ACTIVE[0]

    def show(self, text: str) -> None:
        """Replace the status line with ``text`` (cut to the terminal's width)."""
        if not self.enabled:
            return
        columns = shutil.get_terminal_size((100, 24)).columns
        self._console.err.write("\r\033[K" + cut(printable(text), columns - 1))
        self._console.err.flush()
        self._shown = True
        _ACTIVE[0] = self

    def above(self, text: str) -> None:
        """Print ``text`` as a line of its own above the status line (shown only on a terminal)."""
        if not self.enabled:
            return
        self.clear()
        print(printable(text), file=self._console.err, flush=True)

    def clear(self) -> None:
        """Remove the status line, so that what comes next starts on a clean line."""
        if self._shown:
            self._console.err.write("\r\033[K")
            self._console.err.flush()
            self._shown = False

    def close(self) -> None:
        """Remove the status line for good."""
        self.clear()
        if _ACTIVE[0] is self:
            _ACTIVE[0] = None


#: the status line being shown now (one slot: a command shows one at a time)
_ACTIVE: list[StatusLine | None] = [None]


class Stopwatch:
    """Seconds since it was made, for the elapsed time of a status line."""

    __slots__ = ("_start",)

    def __init__(self) -> None:
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

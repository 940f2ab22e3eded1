"""A fixed-width table of every candidate a scan found, for a notebook cell or a terminal.

Standard library only, so it prints the same inside a Kaggle kernel and in
the CLI. The selected candidate is marked with ``*``; the reason of each
invalid candidate is printed on the line below it, in full.
"""

from __future__ import annotations

import sys
from typing import TextIO

from kaggle_relay.runtime.select import ScanResult
from kaggle_relay.runtime.validate import Candidate

_COLUMNS = ("", "STATUS", "SIZE", "EPOCH", "STEP", "METRIC", "SOURCE", "PATH")


def format_size(count: int) -> str:
    """Format a byte count with a binary unit (``1.5 MiB``)."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_report(result: ScanResult, *, show_invalid: bool = True) -> str:
    """Format every candidate of ``result`` as a table followed by a one-line summary."""
    shown = [c for c in result.candidates if c.valid or show_invalid]
    metric_header = result.metric or "METRICS"
    rows: list[tuple[str, ...]] = [(*_COLUMNS[:5], metric_header.upper(), *_COLUMNS[6:])]
    reasons: dict[int, str] = {}
    for candidate in shown:
        if not candidate.valid:
            reasons[len(rows)] = candidate.reason
        rows.append(_row(candidate, result))
    widths = [max(len(row[index]) for row in rows) for index in range(len(_COLUMNS) - 1)]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if number in reasons:
            lines.append(" " * (sum(widths) + 2 * len(widths) + 3) + f"-> {reasons[number]}")
    lines.append(_summary(result, hidden=len(result.candidates) - len(shown)))
    return "\n".join(lines)


def _row(candidate: Candidate, result: ScanResult) -> tuple[str, ...]:
    marker = "*" if candidate is result.selected else ""
    return (
        marker,
        "valid" if candidate.valid else "invalid",
        format_size(candidate.bytes),
        _text(candidate.epoch),
        _text(candidate.step),
        _metric_text(candidate, result.metric),
        candidate.source + (f" ({candidate.dataset})" if candidate.dataset else ""),
        candidate.path,
    )


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _metric_text(candidate: Candidate, metric: str | None) -> str:
    if metric:
        value = candidate.metrics.get(metric)
        return "-" if value is None else f"{value:.6g}"
    return ", ".join(f"{name}={value:.4g}" for name, value in sorted(candidate.metrics.items())) or "-"


def _summary(result: ScanResult, *, hidden: int) -> str:
    valid = sum(1 for c in result.candidates if c.valid)
    counts = f"{len(result.candidates)} candidates, {valid} valid"
    if hidden:
        counts += f", {hidden} invalid not shown (--show-invalid lists them)"
    if result.selected is None:
        return f"no valid checkpoint selected ({counts})"
    rule = f"best {result.metric} ({result.mode})" if result.metric else "source order, then newest"
    return f"selected by {rule}: {result.selected.path} ({counts})"


def print_report(result: ScanResult, *, show_invalid: bool = True, file: TextIO | None = None) -> None:
    """Print ``format_report(result)`` to ``file`` (default stdout)."""
    print(format_report(result, show_invalid=show_invalid), file=file or sys.stdout)

"""Parsers of the option values several commands share (``--window``, number lists, label ids).

Each raises a one-line :class:`~ragsam.errors.InputError` that quotes the bad
value, so every command reports it the same way (exit code 2).
"""

from __future__ import annotations

from ragsam.errors import InputError


def parse_numbers(text: str, count: int, what: str, kind: type = float) -> tuple:
    """``"a,b,c"`` -> ``count`` numbers of ``kind`` (``what`` names the option in the message)."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise InputError(None, f"{what} must be {count} comma-separated {kind.__name__}s, got {text!r}")
    return values


def parse_window(text: str, what: str = "--window") -> tuple[float, float]:
    """``"LOW,HIGH"`` (HU) -> ``(low, high)``."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(None, f"{what} must be LOW,HIGH in HU, got {text!r}") from None
    return low, high


def parse_label_ids(text: str, what: str) -> tuple[int, ...]:
    """``"1,6"`` or ``"1;6"`` -> label ids ``(1, 6)``; empty text -> ``()``."""
    try:
        return tuple(int(t) for t in text.replace(";", ",").split(",") if t.strip())
    except ValueError:
        raise InputError(None, f"{what} must be comma-separated label ids, got {text!r}") from None

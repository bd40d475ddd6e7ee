"""Shared option parsers (ragsam.cli.options)."""

from __future__ import annotations

import pytest

from ragsam.cli.options import parse_label_ids, parse_numbers, parse_window
from ragsam.errors import InputError


def test_parse_numbers() -> None:
    assert parse_numbers("16,64,64", 3, "--shape", int) == (16, 64, 64)
    assert parse_numbers("2.5,0.8,0.8", 3, "--spacing") == (2.5, 0.8, 0.8)
    with pytest.raises(InputError, match=r"^--shape must be 3 comma-separated ints, got '16,64'$"):
        parse_numbers("16,64", 3, "--shape", int)
    with pytest.raises(InputError, match="--spacing must be 3 comma-separated floats, got 'a,b,c'"):
        parse_numbers("a,b,c", 3, "--spacing")


def test_parse_window() -> None:
    assert parse_window("-125,275") == (-125.0, 275.0)
    with pytest.raises(InputError, match=r"^--window must be LOW,HIGH in HU, got '-125'$"):
        parse_window("-125")


def test_parse_label_ids() -> None:
    assert parse_label_ids("1,6", "--organs") == (1, 6)
    assert parse_label_ids("1;6;", "--organs") == (1, 6)
    assert parse_label_ids("", "--organs") == ()
    with pytest.raises(InputError, match="--require-organs must be comma-separated label ids, got 'liver'"):
        parse_label_ids("liver", "--require-organs")

"""The shared reading rules of the versioned JSON files."""

from __future__ import annotations

import pytest

from ragsam.errors import InputError
from ragsam.utils.formats import check_format_version, read_json_object


def test_read_json_object(tmp_path) -> None:
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json_object(tmp_path / "ok.json", "missing") == {"a": 1}
    with pytest.raises(InputError, match=r"nope.json: run `x` first$"):
        read_json_object(tmp_path / "nope.json", "run `x` first")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        read_json_object(tmp_path / "bad.json", "missing")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InputError, match="list.json: expected a JSON object, found list"):
        read_json_object(tmp_path / "list.json", "missing")


def test_check_format_version() -> None:
    assert check_format_version("f.json", None, (1,), "rebuild") == 1  # written before versions were recorded
    assert check_format_version("f.json", 2, (1, 2), "rebuild") == 2
    with pytest.raises(InputError, match=r"^f.json: format version 3 is written by a newer ragsam "
                                         r"\(this ragsam reads 1, 2\); rerun it$"):
        check_format_version("f.json", 3, (1, 2), "rerun it")
    with pytest.raises(InputError, match="format version 'x' is an unknown format version"):
        check_format_version("f.json", "x", (1,), "rebuild")
    with pytest.raises(InputError, match="format version True is an unknown"):
        check_format_version("f.json", True, (1,), "rebuild")

"""``ragsam app``: bad folders are refused with one line before any server starts."""

from __future__ import annotations

from ragsam.cli.main import run_cli


def test_missing_folder_is_one_line(tmp_path, capsys):
    assert run_cli(["app", "--data", str(tmp_path / "nope"), "--port", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ragsam: error: {tmp_path / 'nope'}: --data folder does not exist"]
    assert run_cli(["app", "--bank", str(tmp_path), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a support bank" in err[0]

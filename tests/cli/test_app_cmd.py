"""``ragsam app``: bad folders are refused with one line before any server starts."""

from __future__ import annotations

import os

from ragsam.cli.main import run_cli


def test_missing_folder_is_one_line(tmp_path, capsys):
    assert run_cli(["app", "--data", str(tmp_path / "nope"), "--port", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ragsam: error: {tmp_path / 'nope'}: --data folder does not exist"]
    assert run_cli(["app", "--bank", str(tmp_path), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a support bank" in err[0]


def test_a_state_folder_served_by_another_app_is_refused_in_one_line(tmp_path, capsys):
    from ragsam.app import AppOptions, create_app

    data = tmp_path / "data"
    data.mkdir()
    session = create_app(AppOptions(data=data, port=1, state=tmp_path / "state"))
    try:
        assert run_cli(["app", "--data", str(data), "--port", "2", "--state", str(tmp_path / "state")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(tmp_path / "state") in err[0] and f"pid {os.getpid()}" in err[0], err
    finally:
        session.close()

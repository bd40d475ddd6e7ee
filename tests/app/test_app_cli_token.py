"""``ragsam app`` prints a URL with a token on every address; ``--no-token`` warns, and is refused off loopback."""

from __future__ import annotations

import re
import stat

import pytest

from ragsam.cli.main import run_cli


@pytest.fixture
def started(monkeypatch):
    """The sessions ``ragsam app`` would serve (the server itself is not started)."""
    import ragsam.app

    sessions = []
    monkeypatch.setattr(ragsam.app, "serve", sessions.append)
    return sessions


def test_the_printed_url_carries_a_token_on_loopback(world, tmp_path, capsys, started):
    assert run_cli(["app", "--data", str(world["data"]), "--port", "8799", "--work", str(tmp_path / "w")]) == 0
    out = capsys.readouterr()
    [session] = started
    assert re.fullmatch(r"http://127\.0\.0\.1:8799/\?token=[\w-]{32}", session.url)
    assert out.out.startswith(f"ragsam app: open {session.url}  ") and out.err == ""
    assert stat.S_IMODE((tmp_path / "w" / "scans").stat().st_mode) == 0o700  # uploads are patient data


def test_no_token_warns(world, tmp_path, capsys, started):
    assert run_cli(["app", "--data", str(world["data"]), "--port", "8799", "--work", str(tmp_path), "--no-token"]) == 0
    out = capsys.readouterr()
    assert started[0].token is None and "open http://127.0.0.1:8799/  " in out.out
    assert out.err.splitlines() == ["ragsam app: warning: --no-token: any user or process of this machine can open "
                                    "this app, read its scans and change the bank"]


def test_no_token_is_refused_off_loopback(world, tmp_path, capsys, started):
    assert run_cli(["app", "--data", str(world["data"]), "--host", "0.0.0.0", "--port", "1", "--no-token"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "ragsam: error: --no-token is refused on 0.0.0.0: only a loopback address may run without a token"]
    assert started == []

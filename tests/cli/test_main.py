"""The command-line entry point: exit codes and one-line errors."""

from __future__ import annotations

import subprocess
import sys

from ragsam.cli.main import run_cli


def test_help_lists_subcommands(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("prepare", "evaluate", "train", "predict", "index", "segment", "weights"):
        assert name in out


def test_unknown_command_is_usage_error(capsys):
    assert run_cli(["frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err


def test_every_subcommand_help_has_an_example(capsys):
    import typer.main

    from ragsam.cli.pacs_cmd import pacs_app
    from ragsam.cli.root import app, index_app, weights_app

    groups = {"": app, "index ": index_app, "weights ": weights_app, "pacs ": pacs_app}
    missing = []
    for prefix, typer_app in groups.items():
        command = typer.main.get_command(typer_app)
        for name in getattr(command, "commands", {}):
            if prefix == "" and name in ("index", "weights", "pacs"):
                continue
            capsys.readouterr()
            code = run_cli([*prefix.split(), name, "--help"])
            text = capsys.readouterr().out
            if code != 0 or "Example" not in text:
                missing.append(prefix + name)
    assert missing == []


def test_console_script_bad_input_exit_code_and_one_line(tmp_path):
    """A user error through the real console script: exit 2, one line on stderr, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "ragsam.cli.main", "evaluate", "--pred", str(tmp_path / "nope.nii.gz"),
         "--gt", str(tmp_path / "nope2.nii.gz")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ragsam: error:"), proc.stderr
    assert "Traceback" not in proc.stderr

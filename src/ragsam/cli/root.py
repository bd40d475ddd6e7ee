"""The typer application that every subcommand module registers itself on.

Subcommand modules import their heavy API lazily (inside the command
function) so that ``ragsam --help`` stays fast.
"""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    name="ragsam",
    help=(
        "Segment Anything for abdominal CT: fine-tune SAM with LoRA/adapters and segment new "
        "scans by retrieval-augmented SAM 2 memory.\n\n"
        "Example: ragsam prepare data/BTCV -o prepared/btcv"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

index_app = typer.Typer(help="Build and query the retrieval support bank.", no_args_is_help=True)
weights_app = typer.Typer(help="List, fetch, convert and verify pretrained weights.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(weights_app, name="weights")


def _print_version(value: bool) -> None:
    if value:
        from ragsam import __version__

        typer.echo(f"ragsam {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
    threads: str | None = typer.Option(
        None, "--threads", help="CPU threads for torch: a number or 'auto' (the cores this process may use; "
        "1 for tiny models). Same as RAGSAM_THREADS.", metavar="N"),
) -> None:
    """Segment Anything for abdominal CT (see ``ragsam COMMAND --help``).

    Options before the subcommand apply to every command (e.g. ``ragsam --threads 1 predict ...``).
    """
    if threads is not None:
        os.environ["RAGSAM_THREADS"] = threads  # read by ragsam.utils.threads, checked where applied

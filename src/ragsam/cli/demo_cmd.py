"""``ragsam demo``: the whole method in one command (phantom by default, or the user's CT)."""

from __future__ import annotations

from pathlib import Path

import typer

from ragsam.cli.root import app

SHORT_TITLES = {"finetuned": "Fine-tuned", "rag": "RAG", "hybrid": "Hybrid", "rag-trained": "RAG trained"}


@app.command(
    "demo",
    help=(
        "Run the whole method in a few minutes on a CPU, offline: prepare slices, fine-tune SAM "
        "(LoRA on SAM ViT-B when its weights are in the Hugging Face cache, else a tiny SAM from "
        "scratch), build the retrieval support bank, segment the test cases with retrieval-augmented "
        "SAM 2 (the hybrid, and SAM 2 fine-tuned episodically for retrieval), evaluate, and write report.md, overlays and NIfTI predictions. "
        "Without --data it uses a synthetic phantom dataset.\n\n"
        "Example: ragsam demo --out demo-output --force"
    ),
)
def demo_command(
    data: Path | None = typer.Option(None, "--data", help="Labelled dataset folder (BTCV, nnU-Net, MSD, FLARE22, "
                                                          "pairs; >= 2 cases). Default: a synthetic phantom."),
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Demo output folder."),
    quick: bool = typer.Option(False, "--quick", help="Smaller phantoms, one test case and a shorter fine-tune."),
    iterations: int | None = typer.Option(None, "--iterations", help="Fine-tuning iterations (overrides the budget)."),
    device: str = typer.Option("cpu", "--device", help="cpu, auto (CUDA when available), cuda or cuda:N."),
    seed: int = typer.Option(0, "--seed", help="Phantom and training seed."),
    label_map: str = typer.Option("btcv", "--label-map", help="Label ids of --data: btcv, flare22 or a JSON file."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Parse, call :func:`ragsam.demo.run.run_demo` with rich stage progress, print the Dice table."""
    from rich.console import Console
    from rich.table import Table

    from ragsam.demo.report import dice_table, weights_statement
    from ragsam.demo.run import run_demo

    console = Console(stderr=True)
    status = console.status("starting", spinner="dots")
    status.start()
    step = {"n": 0}

    def on_stage(name: str, message: str) -> None:
        if step["n"]:
            console.print(f"  [green]done[/green] {step['last']}")
        step["n"] += 1
        step["last"] = message
        status.update(f"[bold]{name}[/bold]: {message}")

    try:
        summary = run_demo(data, out, force=force, device=device, budget="quick" if quick else "standard",
                           iterations=iterations, seed=seed, label_map=label_map,
                           on_stage=on_stage)
    finally:
        status.stop()
    console.print(f"  [green]done[/green] {step.get('last', '')}")
    # organs as rows, methods as columns: fits an 80-column terminal whatever the number of organs
    header, rows = dice_table(summary.methods)
    table = Table(title=f"Dice (%) on {len(summary.test_cases)} test case(s)")
    table.add_column("Organ")
    for m in summary.methods:
        table.add_column(SHORT_TITLES.get(m.method, m.method), justify="right", no_wrap=True)
    for i, organ in enumerate(header[1:], start=1):
        table.add_row(organ, *(row[i] for row in rows), style="bold" if organ == "Mean" else None)
    stdout = Console()
    stdout.print(table)
    stdout.print(weights_statement(summary.weights), markup=False)
    for note in summary.notes:
        stdout.print(f"note: {note}", markup=False)
    stdout.print(f"Report: {summary.report} ({summary.seconds:.0f} s)", markup=False)

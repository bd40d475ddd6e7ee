"""Experiment tables in the paper's layout, our numbers beside the published ones.

Dice values are in [0, 1] with three decimals, as the paper prints them;
organs are columns and the mean is last (Table 1's layout, used for every plan).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

from ragsam.experiments.plans import Plan


@dataclass
class TableRow:
    """One printed row: ``source`` is ``ours`` or ``paper``; values keyed by column name."""

    variant: str
    source: str
    values: dict[str, float]
    trainable_parameters: int | None = None


@dataclass
class ExperimentTable:
    """Columns (organ names then ``mean``) and rows, ours and the paper's interleaved."""

    title: str
    columns: list[str]
    rows: list[TableRow]


def paper_tables() -> dict:
    """The published tables (``ragsam/resources/paper_tables.json``, with its source)."""
    text = resources.files("ragsam").joinpath("resources/paper_tables.json").read_text(encoding="utf-8")
    return json.loads(text)


def build_table(plan: Plan, measured: dict[str, dict[str, float]],
                parameters: dict[str, int | None] | None = None) -> ExperimentTable:
    """Assemble the table of a plan.

    Args:
        plan: the plan (its variants give the row order, ``paper_table`` the published rows).
        measured: variant name -> {organ name: mean Dice in [0, 1]}; variants not yet
            run are left out. The mean column is the mean over the plan's organ columns
            that were measured (NaN organs excluded).
        parameters: variant name -> trainable parameter count.
    Returns:
        The table; paper columns decide the organ columns when the plan has a paper table.
    """
    parameters = parameters or {}
    published = paper_tables()["tables"].get(plan.paper_table or "", None)
    if published is not None:
        columns = [c for c in published["columns"] if c != "mean"] + ["mean"]
    else:
        organs = sorted({o for values in measured.values() for o in values if o != "mean"})
        columns = organs + ["mean"]
    rows: list[TableRow] = []
    for variant in plan.variants:
        if variant.name in measured:
            values = {c: measured[variant.name].get(c, math.nan) for c in columns if c != "mean"}
            finite = [v for v in values.values() if not math.isnan(v)]
            values["mean"] = sum(finite) / len(finite) if finite else math.nan
            rows.append(TableRow(variant.name, "ours", values, parameters.get(variant.name)))
        if published is not None and variant.paper_row in published["rows"]:
            paper_row = published["rows"][variant.paper_row]
            values = {c: float(paper_row[c]) for c in columns if c in paper_row}
            rows.append(TableRow(variant.name, "paper", values))
    return ExperimentTable(title=plan.title, columns=columns, rows=rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _fmt_params(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e6:.2f}M" if count >= 1e5 else f"{count:,}"


def table_markdown(table: ExperimentTable) -> str:
    """The table as GitHub Markdown (``-`` marks what is not measured or not published)."""
    header = ["method", "source", *table.columns, "trainable"]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * len(header)) + "|"]
    for row in table.rows:
        cells = [row.variant, row.source, *(_fmt(row.values.get(c)) for c in table.columns),
                 _fmt_params(row.trainable_parameters)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(table: ExperimentTable) -> str:
    """The table as CSV (empty cells for what is missing)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "source", *table.columns, "trainable_parameters"])
    for row in table.rows:
        writer.writerow([row.variant, row.source,
                         *("" if math.isnan(row.values.get(c, math.nan)) else f"{row.values[c]:.4f}"
                           for c in table.columns),
                         "" if row.trainable_parameters is None else row.trainable_parameters])
    return out.getvalue()

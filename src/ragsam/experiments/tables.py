"""Experiment tables in the paper's layout, our numbers beside the published ones.

Dice values are in [0, 1] with three decimals, as the paper prints them;
organs are columns and the mean is last (Table 1's layout, used for every plan).

``mean`` is always the average of the row's organ columns - ours and the paper's
alike - so that rows compare on the same footing. The paper's own printed mean
stands beside it (``printed mean``) and is marked where it is not the average of
its printed organ values: those are rounded to 3 decimals, so the two may differ
by up to :data:`MEAN_TOLERANCE` (0.0005 from the organs, 0.0005 from the mean);
more means the printed mean is not their average (five rows of Table 1).

Trainable weights appear twice: as a parameter count and as MiB of the saved
trainable tensors, the quantity behind Table 2's "Model size" (18.81M / 6.33M).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

from ragsam.experiments.plans import Plan

#: Largest gap between a printed mean and the average of printed organ values explained by rounding.
MEAN_TOLERANCE = 0.001
MISMATCH_MARK = "*"


@dataclass
class TableRow:
    """One printed row: ``source`` is ``ours`` or ``paper``; values keyed by column name.

    Attributes:
        printed_mean: the paper's printed mean (paper rows).
        mean_mismatch: the printed mean differs from the organ average by more than rounding.
        trainable_parameters / trainable_mib: ours, from the run's saved trainable tensors.
        model_size: the paper's printed "Model size" (Table 2), as printed.
        ours_only: a row the paper does not have.
    """

    variant: str
    source: str
    values: dict[str, float]
    trainable_parameters: int | None = None
    trainable_mib: float | None = None
    printed_mean: float | None = None
    mean_mismatch: bool = False
    model_size: str | None = None
    ours_only: bool = False


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


def _organ_mean(values: dict[str, float]) -> float:
    finite = [v for k, v in values.items() if k != "mean" and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def paper_row(published: dict, name: str, variant: str) -> TableRow:
    """A published row: organ values, their average as ``mean``, the printed mean and its mark."""
    printed = published["rows"][name]
    organs = [c for c in published["columns"] if c != "mean"]
    values = {c: float(printed[c]) for c in organs if c in printed}
    values["mean"] = _organ_mean(values)
    mean = printed.get("mean")
    mismatch = mean is not None and abs(float(mean) - values["mean"]) > MEAN_TOLERANCE + 1e-9
    return TableRow(variant, "paper", values, printed_mean=None if mean is None else float(mean),
                    mean_mismatch=mismatch, model_size=printed.get("model_size"))


def build_table(plan: Plan, measured: dict[str, dict[str, float]],
                parameters: dict[str, int | None] | None = None,
                mib: dict[str, float | None] | None = None) -> ExperimentTable:
    """Assemble the table of a plan.

    Args:
        plan: the plan (its variants give the row order, ``paper_table`` the published rows).
        measured: variant name -> {organ name: mean Dice in [0, 1]}; variants not yet
            run are left out. The mean column is the mean over the plan's organ columns
            that were measured (NaN organs excluded).
        parameters: variant name -> trainable parameter count.
        mib: variant name -> MiB of the saved trainable tensors.
    Returns:
        The table; paper columns decide the organ columns when the plan has a paper table.
        Published rows no variant reproduces (Table 1's TransUNet, nnU-Net ...) come last.
    """
    parameters, mib = parameters or {}, mib or {}
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
            values["mean"] = _organ_mean(values)
            rows.append(TableRow(variant.name, "ours", values, parameters.get(variant.name), mib.get(variant.name),
                                 ours_only=variant.ours))
        if published is not None and variant.paper_row in published["rows"]:
            rows.append(paper_row(published, variant.paper_row, variant.name))
    if published is not None:  # rows the paper reports from other work (TransUNet, nnU-Net ...): printed only
        run = {v.paper_row for v in plan.variants}
        rows += [paper_row(published, name, name) for name in published["rows"] if name not in run]
    return ExperimentTable(title=plan.title, columns=columns, rows=rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _fmt_params(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e6:.2f}M" if count >= 1e5 else f"{count:,}"


def _fmt_mib(row: TableRow) -> str:
    if row.source == "paper":
        return f"{row.model_size} (printed)" if row.model_size else "-"
    return "-" if row.trainable_mib is None else f"{row.trainable_mib:.2f}"


def _printed(row: TableRow) -> str:
    if row.printed_mean is None:
        return "-"
    return f"{row.printed_mean:.3f}" + (f" {MISMATCH_MARK}" if row.mean_mismatch else "")


def table_markdown(table: ExperimentTable) -> str:
    """The table as GitHub Markdown (``-`` marks what is not measured or not published)."""
    header = ["method", "source", *table.columns, "printed mean", "trainable", "MiB"]
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * len(header)) + "|"]
    for row in table.rows:
        source = "ours (not in the paper)" if row.ours_only else row.source
        cells = [row.variant, source, *(_fmt(row.values.get(c)) for c in table.columns), _printed(row),
                 _fmt_params(row.trainable_parameters), _fmt_mib(row)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"`mean` is the average of the organ columns for every row. {MISMATCH_MARK}: the paper's printed "
              f"mean differs from the average of its printed organ values by more than their 3-decimal rounding "
              f"allows ({MEAN_TOLERANCE}). MiB: size of the saved trainable tensors (the paper's Table 2 "
              "\"Model size\" is this size, not a parameter count)."]
    return "\n".join(lines) + "\n"


def table_csv(table: ExperimentTable) -> str:
    """The table as CSV (empty cells for what is missing)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["method", "source", *table.columns, "printed_mean", "printed_mean_is_not_organ_average",
                     "trainable_parameters", "trainable_mib", "paper_model_size"])
    for row in table.rows:
        writer.writerow([row.variant, "ours-only" if row.ours_only else row.source,
                         *("" if math.isnan(row.values.get(c, math.nan)) else f"{row.values[c]:.4f}"
                           for c in table.columns),
                         "" if row.printed_mean is None else f"{row.printed_mean:.3f}",
                         "yes" if row.mean_mismatch else "",
                         "" if row.trainable_parameters is None else row.trainable_parameters,
                         "" if row.trainable_mib is None else f"{row.trainable_mib:.3f}",
                         row.model_size or ""])
    return out.getvalue()

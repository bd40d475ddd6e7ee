"""Tables and report files for an evaluation: console table, metrics.csv, metrics.json, report.md.

The tables are :class:`ragsam.evaluation.results.AggregateTable` (the paper's layout and
averaging rule are documented there).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragsam.evaluation.results import METRICS, AggregateTable, EvaluationResult, nanmean
from ragsam.utils.atomic import write_json, write_text

if TYPE_CHECKING:
    from rich.console import Console


def _fmt(value: float, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100.0 * value:.2f}" if percent else f"{value:.2f}"


def table_rows(table: AggregateTable, hd95_units: str = "mm") -> list[list[str]]:
    """The paper-layout rows as text: ``[label, organ values..., mean]`` for Dice, HD95, NSD."""
    rows = []
    for metric, label, percent in (("dice", "Dice (%)", True), ("hd95", f"HD95 ({hd95_units})", False),
                                   ("nsd", "NSD (%)", True)):
        values = [_fmt(v, percent) for v in table.mean[metric]]
        rows.append([label, *values, _fmt(table.overall[metric], percent)])
    return rows


#: Short column headers for narrow terminals (the paper's abbreviations where it has them).
ABBREVIATIONS = {
    "spleen": "Spl", "right kidney": "RK", "left kidney": "LK", "gallbladder": "Gb", "esophagus": "Eso",
    "liver": "Liv", "stomach": "Sto", "aorta": "Aor", "inferior vena cava": "IVC",
    "portal vein and splenic vein": "PSV", "pancreas": "Pan", "right adrenal gland": "RAG",
    "left adrenal gland": "LAG", "adrenal glands": "AG", "duodenum": "Duo",
}


ABSENT_TEXT = {
    "strict": "organ in neither: n/a, left out of the means; missed or spurious organ: Dice 0, NSD 0, "
              "HD95 = the case's grid diagonal",
    "samed": "as SAMed: spurious organ Dice 1, HD95 0; missed or in neither: Dice 0, HD95 0",
}


def _width(headers: Sequence[str], cell: int = 6) -> int:
    """Rough width of a rich table: each column its widest text + 3 for borders/padding."""
    return 12 + sum(max(len(h), cell) + 3 for h in headers)


def print_table(result: EvaluationResult, console: Console) -> None:
    """Print the aggregate table to a rich ``console``.

    The paper's layout (organs as columns, mean last) when it fits the console width,
    with abbreviated organ names if needed (a key is printed below); otherwise
    transposed (organs as rows, the mean last), so no number is ever cut off.
    """
    from rich.table import Table

    table = result.table()
    units = result.settings["hd95_units"]
    title = f"{len(result.case_ids)} case(s), label map {result.settings['label_map']!r}"
    rows = table_rows(table, units)
    short = [ABBREVIATIONS.get(n.lower(), n[:4]) for n in table.organ_names]
    if _width([*table.organ_names, "Mean"]) <= console.width or _width([*short, "Mean"]) <= console.width:
        use_short = _width([*table.organ_names, "Mean"]) > console.width
        headers = short if use_short else table.organ_names
        rich_table = Table(title=title)
        rich_table.add_column("Metric", no_wrap=True)
        for name in headers:
            rich_table.add_column(name, justify="right", no_wrap=True)
        rich_table.add_column("Mean", justify="right", style="bold", no_wrap=True)
        for row in rows:
            rich_table.add_row(*row)
        console.print(rich_table)
        if use_short:
            console.print(", ".join(f"{a} = {n}" for a, n in zip(short, table.organ_names, strict=True)))
        return
    rich_table = Table(title=title)
    rich_table.add_column("Organ")
    for row in rows:
        rich_table.add_column(row[0], justify="right", no_wrap=True)
    for i, name in enumerate([*table.organ_names, "Mean"]):
        rich_table.add_row(name, *(row[1 + i] for row in rows), style="bold" if name == "Mean" else None)
    console.print(rich_table)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else round(value, 6)
    return value


def metrics_csv(result: EvaluationResult) -> str:
    """One line per case x organ: case_id, organ_id, organ, dice, hd95_<units>, nsd, gt_voxels, pred_voxels,
    nsd_tolerance_mm. Dice and NSD are fractions; NaN ("n/a") is written ``nan``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "organ_id", "organ", "dice", f"hd95_{result.settings['hd95_units']}", "nsd",
                     "gt_voxels", "pred_voxels", "nsd_tolerance_mm"])
    for r in result.rows:
        writer.writerow([_csv_value(v) for v in (r.case_id, r.organ_id, r.organ, r.dice, r.hd95, r.nsd,
                                                  r.gt_voxels, r.pred_voxels, r.nsd_tolerance_mm)])
    return buf.getvalue()


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def metrics_json(result: EvaluationResult) -> dict[str, Any]:
    """Settings, the aggregate table and every case's per-organ values (NaN -> null)."""
    table = result.table()
    organs = []
    for i, (oid, name) in enumerate(zip(table.organ_ids, table.organ_names, strict=True)):
        entry: dict[str, Any] = {"organ_id": oid, "organ": name}
        for m in METRICS:
            entry[f"{m}_mean"] = _json_float(table.mean[m][i])
            entry[f"{m}_std"] = _json_float(table.std[m][i])
            entry[f"{m}_n"] = table.n[m][i]
        organs.append(entry)
    cases = []
    for case in result.cases:
        rows = [r for r in result.rows if r.case_id == case.case_id]
        cases.append({
            "case_id": case.case_id, "pred": str(case.pred), "gt": str(case.gt),
            "image": None if case.image is None else str(case.image),
            "overlay": result.overlays.get(case.case_id),
            "organs": [{"organ_id": r.organ_id, "organ": r.organ, "dice": _json_float(r.dice),
                        "hd95": _json_float(r.hd95), "nsd": _json_float(r.nsd), "gt_voxels": r.gt_voxels,
                        "pred_voxels": r.pred_voxels} for r in rows],
        })
    return {
        "settings": result.settings,
        "aggregate": {"organs": organs, "mean": {m: _json_float(table.overall[m]) for m in METRICS}},
        "cases": cases,
    }


def report_markdown(result: EvaluationResult) -> str:
    """report.md: settings, the paper-layout table, per-case tables and overlay links."""
    table = result.table()
    s = result.settings
    units = s["hd95_units"]
    header = ["Metric", *table.organ_names, "Mean"]
    parts = [
        "# Evaluation report", "",
        f"- Predictions: `{s['pred']}`", f"- Ground truth: `{s['gt']}`",
        f"- Label map: `{s['label_map']}`; cases: {len(result.case_ids)}",
        f"- NSD tolerance: {s['nsd_tolerance']} (mm per organ: "
        + ", ".join(f"{n} {t:g}" for n, t in zip(table.organ_names, s["nsd_tolerance_mm"].values(), strict=True))
        + ")",
        f"- Absent-organ rule: `{s['absent']}` ({ABSENT_TEXT.get(s['absent'], '')}); HD95 in {units}: "
        f"{s['hd95_definition']}",
        "- Values: mean over cases where defined; Mean = mean over organs.",
        "", "## Summary", "", _markdown_table(header, table_rows(table, units)), "",
    ]
    for metric, title, percent in (("dice", "Dice (%)", True), ("hd95", f"HD95 ({units})", False),
                                   ("nsd", "NSD (%)", True)):
        rows = []
        for cid in result.case_ids:
            values = [getattr(r, metric) for r in result.rows if r.case_id == cid]
            rows.append([cid, *(_fmt(v, percent) for v in values), _fmt(nanmean(values), percent)])
        parts += [f"## Per case: {title}", "", _markdown_table(["Case", *table.organ_names, "Mean"], rows), ""]
    if result.overlays:
        parts += ["## Overlays", "", "Ground truth (left) and prediction (right); axial, coronal and sagittal "
                  "slices through the centre of the labelled region, radiological orientation.", ""]
        for cid, rel in result.overlays.items():
            parts += [f"### {cid}", "", f"![{cid}]({rel})", ""]
    return "\n".join(parts)


def write_report(result: EvaluationResult, folder: str | Path) -> list[Path]:
    """Write metrics.csv, metrics.json and report.md into ``folder`` (atomically, replacing).

    ``folder`` is normally the temporary folder of :func:`ragsam.utils.atomic.atomic_dir`,
    so the whole output folder appears at once. Returns the written paths.
    """
    folder = Path(folder)
    return [
        write_text(folder / "metrics.csv", metrics_csv(result)),
        write_json(folder / "metrics.json", metrics_json(result)),
        write_text(folder / "report.md", report_markdown(result)),
    ]

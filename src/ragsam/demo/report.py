"""The demo's ``report.md``: which weights were used, what the numbers mean, a Dice table per method.

Kept apart from :mod:`ragsam.demo.run` (which runs the stages) so the wording can be
read and tested on its own.
"""

from __future__ import annotations

import math

from ragsam.demo.summary import DemoSummary, MethodScore
from ragsam.hub.detect import WeightsUsed

METHOD_TITLES = {
    "finetuned": "Fine-tuned SAM",
    "rag": "RAG (retrieval + SAM 2 memory, no training)",
    "hybrid": "Hybrid (fine-tuned + retrieval)",
    "rag-trained": "RAG, SAM 2 fine-tuned episodically (LoRA rank 4)",
}


def fmt_dice(value: float) -> str:
    """Dice as a percentage with one decimal (``n/a`` for NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{100.0 * value:.1f}"


def weights_statement(weights: WeightsUsed) -> str:
    """One paragraph saying which weights were used and what the numbers therefore mean."""
    lines = (f"Weights: fine-tuned model = {weights.sam_label}; retrieval segmenter = {weights.sam2_label}; "
             f"slice embedder = {weights.embedder_label}.")
    if weights.all_pretrained:
        return lines + (" All three are the public pretrained weights found in the local Hugging Face cache; "
                        "with a demo-sized fine-tune the numbers are still indicative only.")
    missing = [k for k, v in weights.pretrained.items() if not v]
    return lines + (f" No public pretrained weights were found for: {', '.join(missing)}, so those parts are "
                    "ragsam's tiny models (about 2 million parameters each), pre-trained by `ragsam pretrain-tiny` "
                    "on synthetic phantoms that share no case with this demo, never on CT. **These numbers show "
                    "that each method learns and transfers on phantoms; they say nothing about the accuracy of "
                    "the method on CT.** Fetch real weights with `ragsam weights pull NAME` for `sam-vit-b`, "
                    "`sam2.1-tiny` and `dinov2-small`, then run the demo again.")


def dice_table(methods: list[MethodScore]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (methods x organs, mean last) of the Dice table, in percent."""
    organs = list(methods[0].organ_dice) if methods else []
    header = ["Method", *organs, "Mean"]
    rows = [[METHOD_TITLES.get(m.method, m.method), *(fmt_dice(m.organ_dice[o]) for o in organs),
             fmt_dice(m.mean_dice)] for m in methods]
    return header, rows


def render_report(summary: DemoSummary) -> str:
    """The Markdown text of ``report.md``."""
    header, rows = dice_table(summary.methods)
    table = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    b = summary.budget
    source = (f"synthetic phantom dataset (`data/`, {b.cases} cases of {b.shape[0]}x{b.shape[1]}x{b.shape[2]} "
              "voxels)" if summary.source == "phantom" else f"`{summary.source}`")
    parts = [
        "# ragsam demo",
        "",
        f"Data: {source}. Training cases (fine-tuning and support bank): {', '.join(summary.train_cases)}. "
        f"Test cases: {', '.join(summary.test_cases)}.",
        "",
        weights_statement(summary.weights),
        "",
        "## Dice (%) on the test cases, mean over cases",
        "",
        *table,
        "",
        f"Fine-tuning: {b.iterations} iterations of {b.batch_size} slices at {b.size} px, peak learning rate "
        f"{b.lr:g}. Retrieval: k = {b.k} support slices per query slice, supports from the training cases only. "
        f"Episodic fine-tuning of SAM 2 (`rag_run/`, `ragsam train-rag`): {b.rag_iterations} iterations of "
        f"{b.rag_batch_size} episodes (a training slice and its k supports from the other training cases), "
        f"peak learning rate {b.rag_lr:g}.",
        "",
        "## Outputs",
        "",
    ]
    for m in summary.methods:
        links = ", ".join(f"[{cid}]({path})" for cid, path in m.overlays.items())
        parts.append(f"- {METHOD_TITLES.get(m.method, m.method)}: predictions `{m.predictions}/`, "
                     f"[full metrics (Dice, HD95, NSD)]({m.evaluation}/report.md), overlays {links or 'none'}")
    parts += ["- Reusable: slice cache `prepared/`, fine-tuned run `run/` (`ragsam predict run ...`), "
              "support bank `bank/` (`ragsam segment ... --index bank`), episodic SAM 2 run `rag_run/` "
              "(`ragsam segment ... --sam2-run rag_run`).", ""]
    if summary.notes:
        parts += ["## Notes", "", *(f"- {n}" for n in summary.notes), ""]
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in summary.stages.items())
    parts += ["## Timing", "", f"Total {summary.seconds:.1f} s ({timing}).", ""]
    return "\n".join(parts)

"""Built-in experiment plans: the RAG-SAM paper's Tables 1-4 as data.

A plan is a list of variants evaluated on the same test cases and shown in
one table beside the paper's published row for each variant. Variants are:

* ``finetune``: ``ragsam train`` with a training preset (``samed``, ``samed_s``,
  ``medsa``: the paper's recipes) and configuration overrides, then ``ragsam predict``;
* ``baseline``: ``ragsam baseline`` (prompted SAM or MedSAM);
* ``rag``: a fine-tuned variant's model fused with retrieval (``ragsam segment --run``);
* ``retrieval``: retrieval alone (``ragsam segment``): SAM 2 training-free, or, with a
  ``preset`` (``rag_lora`` ...), episodically fine-tuned first (``ragsam train-rag``, then
  ``ragsam segment --sam2-run``).

A variant without ``paper_row`` is ours (the paper has no such row): the base model
of a rag row, for instance. Every built-in variant and the source of every setting is
listed in ``docs/paper-fidelity.md`` (tests/experiments check the two agree).

Plans can also come from a YAML file with the same fields (``ragsam experiment my.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ragsam.config import from_dict
from ragsam.errors import InputError


@dataclass
class Variant:
    """One row of a plan's table.

    Attributes:
        name: row label and folder name.
        kind: ``finetune`` | ``baseline`` | ``rag`` | ``retrieval``.
        overrides: ``key=value`` training-config overrides (finetune) .
        paper_row: the row of the paper's table this variant reproduces.
        prompt: ``point1`` | ``point3`` | ``box`` (baseline).
        weights: ``sam`` or ``medsam``: which pretrained weights a baseline uses.
        base: for ``rag``, the finetune variant whose model is fused with retrieval.
        x: a number to plot this variant against (the LoRA rank of Table 3).
        preset: training preset of a finetune variant (``None``: the run's ``base_config``);
            of a retrieval variant, the ``train-rag`` preset (``None``: training-free SAM 2).
    """

    name: str
    kind: str = "finetune"
    overrides: list[str] = field(default_factory=list)
    paper_row: str | None = None
    prompt: str | None = None
    weights: str = "sam"
    base: str | None = None
    x: float | None = None
    preset: str | None = None

    @property
    def ours(self) -> bool:
        """True for a row the paper does not have."""
        return self.paper_row is None


@dataclass
class Plan:
    """A whole experiment: dataset, organs, variants and the paper table to compare with.

    Attributes:
        absent: Dice rule for organs absent from the ground truth and/or the prediction
            (:mod:`ragsam.evaluation.metrics`): ``"samed"`` (SAMed's test code, which the
            paper's SAMed numbers come from) or ``"strict"`` (ours).
    """

    name: str
    title: str
    dataset: str = "btcv"
    organs: str = "paper-8"
    paper_table: str | None = None
    x_label: str | None = None
    variants: list[Variant] = field(default_factory=list)
    absent: str = "strict"


def _baselines() -> list[Variant]:
    """Table 1's prompted SAM / MedSAM rows (``ragsam baseline``)."""
    rows = []
    for weights, label in (("sam", "SAM"), ("medsam", "MedSAM")):
        for prompt, what in (("point1", "1 point"), ("point3", "3 points"), ("box", "BBox 0.5")):
            rows.append(Variant(f"{label} {what}", kind="baseline", prompt=prompt, weights=weights,
                                paper_row=f"{label} {what}"))
    return rows


BUILTIN_PLANS: dict[str, Plan] = {
    "paper-btcv": Plan(
        name="paper-btcv", title="Table 1: BTCV, SAMed (SAMed_s + RAG) and Med-SA against prompted SAM/MedSAM",
        dataset="btcv", organs="btcv-table1", paper_table="paper-btcv", absent="samed",
        variants=[
            # Section 4.2: "LoRA rank 4 ... the LoRA fine-tuning mode for the mask decoder, combined with RAG".
            Variant("SAMed_s without RAG", preset="samed_s"),
            Variant("SAMed", kind="rag", base="SAMed_s without RAG", paper_row="SAMed"),
            Variant("Med-SA", preset="medsa", paper_row="Med-SA"),
            *_baselines(),
        ],
    ),
    "paper-flare-decoder": Plan(
        name="paper-flare-decoder", title="Table 2: FLARE22, mask decoder fully fine-tuned vs LoRA",
        dataset="flare22", organs="paper-8", paper_table="paper-flare-decoder", absent="samed",
        variants=[
            Variant("SAMed", preset="samed", paper_row="SAMed"),
            Variant("SAMed_s", preset="samed_s", paper_row="SAMed_s"),
        ],
    ),
    "paper-flare-rank": Plan(
        name="paper-flare-rank", title="Table 3: FLARE22, LoRA rank", dataset="flare22", organs="paper-8",
        paper_table="paper-flare-rank", x_label="LoRA rank", absent="samed",
        variants=[Variant(f"rank {r}", preset="samed", overrides=[f"model.peft.rank={r}"], paper_row=f"rank {r}",
                          x=float(r)) for r in (1, 4, 16)],
    ),
    "paper-flare-rag": Plan(
        name="paper-flare-rag", title="Table 4: FLARE22, SAMed with and without retrieval",
        dataset="flare22", organs="paper-8", paper_table="paper-flare-rag", absent="samed",
        variants=[
            Variant("without RAG", preset="samed", paper_row="without RAG"),
            Variant("with RAG", kind="rag", base="without RAG", paper_row="with RAG"),
        ],
    ),
    "rag-finetune": Plan(
        name="rag-finetune", title="Ours, beside Table 4: training-free vs episodically fine-tuned retrieval (FLARE22)",
        dataset="flare22", organs="paper-8", paper_table="paper-flare-rag", absent="samed",
        variants=[
            Variant("without RAG", preset="samed", paper_row="without RAG"),
            Variant("with RAG", kind="rag", base="without RAG", paper_row="with RAG"),
            Variant("RAG, training-free SAM 2", kind="retrieval"),
            Variant("RAG, fine-tuned SAM 2", kind="retrieval", preset="rag_lora"),
        ],
    ),
}

_KINDS = ("finetune", "baseline", "rag", "retrieval")


def load_plan(name_or_path: str) -> Plan:
    """A built-in plan by name, or a plan from a YAML file.

    Raises:
        InputError: unknown name, unreadable file, or an inconsistent plan.
    """
    if name_or_path in BUILTIN_PLANS:
        plan = BUILTIN_PLANS[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise InputError(name_or_path, f"neither a built-in plan ({', '.join(BUILTIN_PLANS)}) nor a YAML file")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise InputError(path, "a plan must be a YAML mapping")
        raw_variants = data.pop("variants", [])
        if not isinstance(raw_variants, list) or not all(isinstance(v, dict) for v in raw_variants):
            raise InputError(path, f"variants must be a list of mappings (name: ..., kind: ...), got {raw_variants!r}")
        variants = [from_dict(Variant, v, source=str(path)) for v in raw_variants]
        plan = from_dict(Plan, {**data, "variants": []}, source=str(path))
        plan.variants = variants
    validate_plan(plan, name_or_path)
    return plan


def validate_plan(plan: Plan, source: str) -> None:
    """Refuse duplicate names, unknown kinds and rag variants without a finetune base."""
    names = [v.name for v in plan.variants]
    if not names:
        raise InputError(source, "the plan has no variants")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(source, f"duplicate variant names {duplicates}")
    finetunes = {v.name for v in plan.variants if v.kind == "finetune"}
    if plan.absent not in ("strict", "samed"):
        raise InputError(source, f"absent rule {plan.absent!r} is not strict or samed")
    for v in plan.variants:
        if v.kind not in _KINDS:
            raise InputError(source, f"variant {v.name!r}: kind {v.kind!r} is not one of {_KINDS}")
        if v.kind == "baseline" and v.prompt not in ("point1", "point3", "box"):
            raise InputError(source, f"variant {v.name!r}: prompt {v.prompt!r} is not point1, point3 or box")
        if v.kind == "rag" and v.base not in finetunes:
            raise InputError(source, f"variant {v.name!r}: base {v.base!r} is not a finetune variant of the plan")


def variant_folder_name(name: str) -> str:
    """A file-system-safe folder name for a variant (``SAM 1 point`` -> ``sam-1-point``)."""
    safe = "".join(c.lower() if c.isalnum() else "-" for c in name)
    return "-".join(part for part in safe.split("-") if part)

"""Run a plan: prepare once, run each variant, skip finished ones, resume interrupted ones.

Work folder layout::

    <out>/
      plan.json                 the resolved plan and settings (a re-run must match it)
      prepared/                 the slice cache (``ragsam prepare``; incremental)
      gt/<case>.nii.gz          test ground truth in the plan's label scheme
      bank/                     the retrieval support bank (rag variants)
      variants/<slug>/
        run/                    training run (finetune) - resumed when interrupted
        predictions/<case>.nii.gz
        evaluation/             metrics.csv, metrics.json, report.md, overlays/
        done.json               per-organ mean Dice, trainable parameters and their MiB; present = finished
      table.md, table.csv       ours beside the paper's published values
      figures/                  variants side by side on a central slice; Dice vs rank

``tiny`` swaps every model for a tiny one and shortens training, so a whole plan runs on a
CPU in minutes: finetune variants train ragsam's shipped pre-trained tiny SAM with their
preset's recipe on a tiny budget (:mod:`ragsam.experiments.tiny_recipe`), retrieval uses the
shipped tiny SAM 2 and embedder, prompted baselines a random tiny SAM. The numbers then show
the protocol working and each recipe learning, not the method's accuracy.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ragsam.config import with_overrides
from ragsam.data.cache_meta import CacheMeta
from ragsam.data.splits import Splits
from ragsam.errors import InputError
from ragsam.experiments.plans import Plan, Variant, load_plan, variant_folder_name
from ragsam.experiments.records import PlanRecord, VariantResult, forget_done, is_done
from ragsam.utils.atomic import write_text

if TYPE_CHECKING:
    from ragsam.hub.tiny_models import TinyModels
    from ragsam.training.config import TrainConfig
    from ragsam.training.rag_config import RagTrainConfig

Log = Callable[[str], None]

@dataclass
class ExperimentSettings:
    """What a plan runs with (saved in ``plan.json``; a re-run must agree).

    Attributes:
        data: dataset folder (any layout ``ragsam prepare`` reads).
        tiny: tiny models and short training (CPU run of the protocol): finetune variants train
            ragsam's shipped tiny SAM with their preset's recipe on a tiny budget
            (:mod:`ragsam.experiments.tiny_recipe`); retrieval uses the shipped tiny SAM 2 and
            slice embedder (all pre-trained on synthetic phantoms, :mod:`ragsam.hub.tiny_models`),
            so the rows learn and read their memory instead of sitting at chance; prompted
            baselines a random tiny SAM.
        sam_weights / medsam_weights / sam2_weights / embedder: weights for each role;
            ``sam_h_weights`` for finetune presets on ViT-H (Med-SA).
        base_config: training preset of finetune variants that name none.
        size: slice size (None: 512, or 64 with ``tiny``).
        iterations: override of ``optim.max_iterations`` (None: the preset's).
        k: retrieved supports per slice for rag variants.
        z_prior: weight of the relative-z retrieval prior (0: DINOv2 + Faiss only, the paper).
        hybrid_weight: ``w`` of the retrieval term when a rag variant fuses it with its
            fine-tuned base (:mod:`ragsam.retrieval.hybrid`; the paper gives no rule).
        device: ``auto`` | ``cpu`` | ``cuda``.
        seed: seeds prompts and training.
    """

    data: str
    tiny: bool = False
    sam_weights: str = "facebook/sam-vit-base"
    medsam_weights: str = "flaviagiammarino/medsam-vit-base"
    sam2_weights: str = "facebook/sam2.1-hiera-tiny"
    embedder: str = "facebook/dinov2-small"
    sam_h_weights: str = "facebook/sam-vit-huge"
    base_config: str = "samed"
    size: int | None = None
    iterations: int | None = None
    k: int = 4
    z_prior: float = 0.0
    hybrid_weight: float = 0.5
    device: str = "auto"
    seed: int = 0
    extra_overrides: list[str] = field(default_factory=list)


def plan_label_map(plan: Plan, settings: ExperimentSettings) -> str:
    """The label scheme the plan trains and scores in (``paper-8:flare22`` ...).

    With ``tiny`` the data (the phantom or the test CT) carries BTCV ids, so the subset is taken of BTCV.
    """
    base = "btcv" if settings.tiny else plan.dataset
    if plan.organs == "paper-8":
        return f"paper-8:{base}"
    return plan.organs


def preset_summary(preset: str, overrides: list[str] | None = None) -> str:
    """The recipe of a training preset in one line (for ``--dry-run``)."""
    from ragsam.peft.apply import describe
    from ragsam.training.config import load_train_config

    cfg = load_train_config(preset, list(overrides or []))
    m, o = cfg.model, cfg.optim
    batch = f"global batch {o.global_batch}" if o.global_batch else f"batch {o.batch_size} x {o.grad_accum}"
    prompt = "frozen"
    if m.peft.train_prompt_encoder:
        prompt = "trained" if m.peft.train_positional_embedding else "trained (positional matrix frozen)"
    return (f"{m.arch} {m.image_size} px, {describe(m.peft)}, prompt encoder {prompt}, normalize {m.normalize}, heads "
            f"{m.head_init}, loss {o.dice_weight:g} Dice + {o.ce_weight:g} CE at {o.loss_resolution} resolution, "
            f"lr {o.lr:g} (warm-up {o.warmup}, power {o.power:g}), wd {o.weight_decay:g}, {batch}, "
            f"{cfg.last_iteration} of {o.max_iterations} iterations, {'bf16' if o.bf16 else 'fp32'}, "
            f"augmentation {'on' if cfg.augment.enabled else 'off'}")


def describe_plan(plan: Plan, out: Path, settings: ExperimentSettings | None = None) -> list[str]:
    """One line per variant: kind, what it runs and whether it is finished (for ``--dry-run``)."""
    settings = settings or ExperimentSettings(data="")
    lines = [f"{plan.name}: {plan.title} (dataset {plan.dataset}, organs {plan.organs}, "
             f"absent-organ rule {plan.absent})"]
    for v in plan.variants:
        done = is_done(out / "variants" / variant_folder_name(v.name))
        preset = (v.preset or settings.base_config) if v.kind == "finetune" else ""
        command = " ".join(["train --config", preset, *v.overrides])
        what = {"finetune": f"{command} ({preset_summary(preset, v.overrides)})" if v.kind == "finetune" else "",
                "baseline": f"prompted {v.weights.upper()} ({v.prompt})",
                "rag": f"retrieval (DINOv2 + Faiss, k={settings.k}, z-prior {settings.z_prior:g}) fused with "
                       f"'{v.base}' (hybrid weight {settings.hybrid_weight:g})",
                "retrieval": f"retrieval alone (k={settings.k}), SAM 2 "
                             + (f"fine-tuned on episodes (train-rag --config {v.preset})" if v.preset
                                else "training-free")}[v.kind]
        row = f"paper row '{v.paper_row}'" if v.paper_row else "ours, not in the paper"
        lines.append(f"  [{'done' if done else 'todo'}] {v.name}: {what.strip()} [{row}]")
    return lines


def finetune_config(variant: Variant, settings: ExperimentSettings, prepared: Path, num_organs: int,
                    tiny_sam: str = "") -> TrainConfig:
    """The resolved training configuration of a finetune variant.

    Its preset (with ``tiny``: :func:`~ragsam.experiments.tiny_recipe.tiny_recipe` of it on the
    tiny SAM ``tiny_sam``), then the run's data, organs, seed and device, the variant's own
    overrides (plan file), ``size`` / ``iterations``, and last the user's extra overrides
    (command line).
    """
    from ragsam.experiments.tiny_recipe import tiny_recipe
    from ragsam.training.config import load_train_config, validate

    preset = variant.preset or settings.base_config
    recipe = load_train_config(preset)
    if settings.tiny:
        cfg = tiny_recipe(recipe, tiny_sam)
    else:
        big = recipe.model.arch == "sam_vit_h"
        cfg = replace(recipe, model=replace(recipe.model, weights=settings.sam_h_weights if big else settings.sam_weights))
    cfg = replace(cfg, data=replace(cfg.data, prepared=str(prepared), train=["train"], val=[]),
                  model=replace(cfg.model, num_classes=num_organs), seed=settings.seed, device=settings.device,
                  log=replace(cfg.log, progress=False))
    cfg = with_overrides(cfg, list(variant.overrides))
    if settings.size is not None:
        cfg = replace(cfg, model=replace(cfg.model, image_size=settings.size))
    if settings.iterations is not None:
        cfg = replace(cfg, optim=replace(cfg.optim, max_iterations=settings.iterations, stop_iteration=None))
    return validate(with_overrides(cfg, list(settings.extra_overrides)), "<command line>")


_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def trainable_size(run_dir: Path) -> tuple[int | None, float | None]:
    """(trainable parameter count, MiB of their saved tensors) of a run's ``model.safetensors``.

    The paper's Table 2 "model size" (18.81M / 6.33M) is this size, not a count:
    SAMed saves its trainable tensors in fp32, 4 bytes each.
    """
    from safetensors import safe_open

    path = run_dir / "model.safetensors"
    if not path.is_file():
        return None, None
    count = nbytes = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
            tensor = handle.get_slice(key)
            n = math.prod(tensor.get_shape())
            count += n
            nbytes += n * _BYTES[tensor.get_dtype()]
    return int(count), nbytes / 2**20


class ExperimentRunner:
    """Runs one plan in one work folder (see the module docstring for the layout)."""

    def __init__(self, plan: Plan, settings: ExperimentSettings, out: Path, log: Log = print) -> None:
        self.plan, self.settings, self.out, self.log = plan, settings, Path(out), log
        self.prepared = self.out / "prepared"
        self.label_map = plan_label_map(plan, settings)

    # -- shared stages -------------------------------------------------------------------
    def prepare(self) -> None:
        """Prepare the dataset (incremental) and write the test ground truth in the plan's ids."""
        from ragsam.data.prepare import PrepareOptions, prepare_dataset
        from ragsam.data.slices import SliceSettings

        size = self.settings.size or (64 if self.settings.tiny else 512)
        summary = prepare_dataset(self.settings.data, self.prepared,
                                  PrepareOptions(settings=SliceSettings(size=size), label_map=self.label_map,
                                  split="auto", seed=self.settings.seed))
        self.log(f"prepared {len(summary.cases)} cases ({len(summary.built)} built, {len(summary.reused)} reused)")
        self._write_ground_truth()

    def _meta(self) -> CacheMeta:
        return CacheMeta.read(self.prepared)

    def test_cases(self) -> list[str]:
        """Case ids of the test split (every case is test when the split has none)."""
        test = list(Splits.read(self.prepared).test)
        if not test:
            raise InputError(self.settings.data, "the split has no test cases; a plan needs at least one")
        return sorted(test)

    def _write_ground_truth(self) -> None:
        from ragsam.data.cases import CaseRef, load_case
        from ragsam.data.label_maps import load_label_map
        from ragsam.data.prepare import convert_labels
        from ragsam.data.volume import write_labels

        lmap = load_label_map(self.label_map)
        cases = self._meta().cases
        for cid in self.test_cases():
            target = self.out / "gt" / f"{cid}.nii.gz"
            if target.is_file():
                continue
            case = load_case(CaseRef(cid, Path(str(cases[cid].image)), Path(str(cases[cid].labels))))
            labels = convert_labels(case.labels, lmap)
            write_labels(labels.array, labels.geometry, target, force=True)

    def _image_of(self, case_id: str) -> Path:
        return Path(str(self._meta().cases[case_id].image))

    # -- variants --------------------------------------------------------------------------
    def variant_dir(self, variant: Variant) -> Path:
        return self.out / "variants" / variant_folder_name(variant.name)

    def run_variant(self, variant: Variant) -> VariantResult:
        """Run (or resume, or skip when finished) one variant and return its result."""
        folder = self.variant_dir(variant)
        finished = VariantResult.read(folder)
        if finished is not None:
            self.log(f"{variant.name}: finished earlier, skipped")
            return finished
        predictions = folder / "predictions"
        predictions.mkdir(parents=True, exist_ok=True)
        params, mib = None, None
        if variant.kind == "finetune":
            params, mib = self._finetune(variant, folder, predictions)
        elif variant.kind == "rag":
            params, mib = self._rag(variant, predictions)
        elif variant.kind == "retrieval":
            params, mib = self._retrieval(variant, folder, predictions)
        else:
            self._baseline(variant, folder, predictions)
        dice = self._evaluate(predictions, folder / "evaluation")
        result = VariantResult(variant.name, dice, params, str(predictions), mib)
        result.write(folder)
        return result

    def _finetune(self, variant: Variant, folder: Path, predictions: Path) -> tuple[int | None, float | None]:
        from ragsam.data.label_maps import load_label_map
        from ragsam.inference.predict import PredictOptions, predict
        from ragsam.training.run import train

        run_dir = folder / "run"
        finished = (run_dir / "model.safetensors").is_file() and (run_dir / "val.json").is_file()
        if not finished:
            resume = (run_dir / "checkpoints" / "state.pt").is_file()
            self.log(f"{variant.name}: {'resuming' if resume else 'training'} in {run_dir}")
            cfg = None if resume else finetune_config(variant, self.settings, self.prepared,
                                                      load_label_map(self.label_map).num_classes - 1,
                                                      str(self._shipped.sam) if self.settings.tiny else "")
            train(cfg, run_dir, resume=resume, force=not resume and run_dir.exists())
        for cid in self.test_cases():
            predict(run_dir, self._image_of(cid), predictions / f"{cid}.nii.gz",
                    PredictOptions(device=self.settings.device), force=True)
        return trainable_size(run_dir)

    @functools.cached_property
    def _shipped(self) -> TinyModels:
        """ragsam's shipped tiny models (``tiny`` runs; resolved once: they are checksummed)."""
        from ragsam.hub.tiny_models import tiny_models

        return tiny_models()

    @functools.cached_property
    def _retrieval_models(self) -> tuple[str, str, int]:
        """``(SAM 2 weights, embedder weights, embedder input side)`` of the retrieval variants."""
        if not self.settings.tiny:
            return self.settings.sam2_weights, self.settings.embedder, 224
        return str(self._shipped.sam2), str(self._shipped.embedder), self._shipped.embedder_image_size

    def _bank(self) -> Path:
        from ragsam.retrieval.bank_build import BankOptions, build_bank

        bank = self.out / "bank"
        if not (bank / "bank.json").is_file():
            _, embedder, image_size = self._retrieval_models
            build_bank(self.prepared, bank, BankOptions(embedder_weights=embedder, image_size=image_size,
                       split="train"), force=True)
        return bank

    def _rag(self, variant: Variant, predictions: Path) -> tuple[int | None, float | None]:
        from ragsam.inference.rag_segment import SegmenterOptions, load_segmenter
        from ragsam.retrieval.segment import SegmentOptions
        from ragsam.training.run_info import RunFiles

        base = next(v for v in self.plan.variants if v.name == variant.base)
        base_run = self.variant_dir(base) / "run"
        if not RunFiles.probe(base_run).weights:
            raise InputError(base_run, f"variant {variant.name!r} needs {base.name!r} trained first")
        bank = self._bank()
        sam2 = self._retrieval_models[0]
        segmenter = load_segmenter(bank, SegmenterOptions(sam2, device=self.settings.device))  # shared by the cases
        options = SegmentOptions(k=self.settings.k, run_dir=base_run, z_prior=self.settings.z_prior or None,
                                 hybrid_weight=self.settings.hybrid_weight)
        for cid in self.test_cases():
            segmenter.segment(self._image_of(cid), predictions / f"{cid}.nii.gz", options, force=True)
        return trainable_size(base_run)

    def _retrieval(self, variant: Variant, folder: Path, predictions: Path) -> tuple[int | None, float | None]:
        """Retrieval alone; with a ``train-rag`` preset, SAM 2 is first fine-tuned on the bank's episodes."""
        from ragsam.inference.rag_segment import SegmenterOptions, load_segmenter
        from ragsam.retrieval.segment import SegmentOptions

        bank = self._bank()
        run_dir = None
        if variant.preset is not None:
            run_dir = self._train_sam2(variant, folder / "run", bank)
        sam2 = self._retrieval_models[0]
        segmenter = load_segmenter(bank, SegmenterOptions(sam2, run_dir, device=self.settings.device))
        options = SegmentOptions(k=self.settings.k, z_prior=self.settings.z_prior or None)
        for cid in self.test_cases():
            segmenter.segment(self._image_of(cid), predictions / f"{cid}.nii.gz", options, force=True)
        return (None, None) if run_dir is None else trainable_size(run_dir)

    def _train_sam2(self, variant: Variant, run_dir: Path, bank: Path) -> Path:
        """``ragsam train-rag`` with the variant's preset on the bank (train cases), resumed when interrupted."""
        from ragsam.training.rag_run import train_rag

        if (run_dir / "model.safetensors").is_file() and (run_dir / "val.json").is_file():
            return run_dir
        resume = (run_dir / "checkpoints" / "state.pt").is_file()
        self.log(f"{variant.name}: {'resuming' if resume else 'training'} SAM 2 on retrieval episodes in {run_dir}")
        train_rag(None if resume else self._rag_config(variant, bank), run_dir, resume=resume,
                  force=not resume and run_dir.exists())
        return run_dir

    def _rag_config(self, variant: Variant, bank: Path) -> RagTrainConfig:
        """The resolved ``train-rag`` configuration of a retrieval variant (its preset, then the run's
        bank, k, prior, organs, seed and device, the variant's overrides, the tiny budget, ``iterations``)."""
        from ragsam.data.label_maps import load_label_map
        from ragsam.training.rag_config import load_rag_config, validate_rag

        s = self.settings
        cfg = load_rag_config(variant.preset)
        cfg = replace(cfg, data=replace(cfg.data, bank=str(bank), train=["train"], val=[], k=s.k,
                                        z_prior=s.z_prior or None),
                      model=replace(cfg.model, num_classes=load_label_map(self.label_map).num_classes - 1,
                                    weights=self._retrieval_models[0]),
                      seed=s.seed, device=s.device, log=replace(cfg.log, progress=False))
        cfg = with_overrides(cfg, list(variant.overrides))
        if s.tiny:
            cfg = replace(cfg, optim=replace(cfg.optim, max_iterations=20, warmup=2, lr=0.002), checkpoint_every=10)
        if s.iterations is not None:
            cfg = replace(cfg, optim=replace(cfg.optim, max_iterations=s.iterations, stop_iteration=None))
        return validate_rag(cfg, "<command line>")

    def _baseline(self, variant: Variant, folder: Path, predictions: Path) -> None:
        from ragsam.baselines.run import BaselineConfig, run_baseline

        tiny = self.settings.tiny
        weights = "random" if tiny else (self.settings.medsam_weights if variant.weights == "medsam"
                                         else self.settings.sam_weights)
        work = folder / "baseline"
        config = BaselineConfig(prompt=variant.prompt, weights=weights, arch="tiny" if tiny else "sam_vit_b",
                                seed=self.settings.seed, device=self.settings.device, cases=self.test_cases(),
                                overlays=False)
        summary = run_baseline(self.prepared, work, config, force=True)
        for source in summary.predictions:
            os.replace(source, predictions / Path(source).name)

    def _evaluate(self, predictions: Path, out: Path) -> dict[str, float]:
        from ragsam.evaluation.evaluate import EvaluationOptions, evaluate

        result = evaluate(predictions, self.out / "gt",
                          EvaluationOptions(label_map=self.prepared / "label_map.json",
                          absent=self.plan.absent), out_dir=out, force=True, images=None)
        table = result.table()
        return {name: float(value) for name, value in zip(table.organ_names, table.mean["dice"], strict=True)}

    # -- the whole plan ----------------------------------------------------------------------
    def run(self, force: bool = False) -> dict[str, VariantResult]:
        """Prepare, run every variant in order (finetune before rag), then write tables and figures."""
        self.out.mkdir(parents=True, exist_ok=True)
        PlanRecord.of(self.plan, self.settings).check_and_write(self.out, force)
        if force:
            for variant in self.plan.variants:
                forget_done(self.variant_dir(variant))
        self.prepare()
        order = sorted(self.plan.variants, key=lambda v: {"finetune": 0, "rag": 1, "retrieval": 2, "baseline": 3}[v.kind])
        results = {v.name: self.run_variant(v) for v in order}
        self.write_outputs(results)
        return results

    def write_outputs(self, results: dict[str, VariantResult]) -> None:
        """``table.md``/``table.csv`` beside the paper's values, and the figures."""
        from ragsam.experiments.tables import build_table, table_csv, table_markdown

        table = build_table(self.plan, {n: r.dice for n, r in results.items()},
                            {n: r.trainable_parameters for n, r in results.items()},
                            {n: r.trainable_mib for n, r in results.items()})
        note = ("\n> Tiny models on small data (SAMs trained from random weights for a few steps; retrieval "
                "with ragsam's tiny SAM 2 and embedder, pre-trained on synthetic phantoms only): these numbers "
                "show the protocol working, not the method's accuracy.\n" if self.settings.tiny else "")
        write_text(self.out / "table.md", table_markdown(table) + note, force=True)
        write_text(self.out / "table.csv", table_csv(table), force=True)
        self._figures(table, results)

    def _figures(self, table, results: dict[str, VariantResult]) -> None:
        from ragsam.experiments.figure_data import central_slice_panels
        from ragsam.experiments.figures import plot_dice_against_x, plot_variant_slices

        figures = self.out / "figures"
        xs = {v.name: v.x for v in self.plan.variants if v.x is not None and v.name in results}
        if xs:
            plot_dice_against_x(table, xs, self.plan.x_label or "x", figures / "dice_vs_x.png")
        for cid in self.test_cases():
            panels = central_slice_panels(self._image_of(cid), self.out / "gt" / f"{cid}.nii.gz",
                                          {n: Path(r.predictions) / f"{cid}.nii.gz" for n, r in results.items()},
                                          self.prepared / "label_map.json")
            plot_variant_slices(*panels, title=f"{self.plan.name}: {cid}", path=figures / f"{cid}.png")


# The quick demo's phantoms: 4 BTCV-labelled cases (3 train / 1 test), 16 x 64 x 64 voxels.
TINY_PHANTOM = {"n_cases": 4, "shape": (16, 64, 64), "spacing_mm": (8.0, 6.0, 6.0)}


def tiny_phantom_data(out: Path, seed: int = 0) -> Path:
    """``<out>/data``: the phantom dataset a ``tiny`` plan runs on without ``--data`` (written once).

    A tiny plan needs no real data: it only shows the protocol working, and so runs anywhere,
    from an installed wheel too.
    """
    from ragsam.data.phantom import write_phantom_dataset

    folder = out / "data"
    if not folder.is_dir():
        write_phantom_dataset(folder, layout="btcv", seed=seed, **TINY_PHANTOM)
    return folder


def run_experiment(plan_name: str, settings: ExperimentSettings, out: str | os.PathLike, dry_run: bool = False,
                   force: bool = False, log: Log = print) -> dict[str, VariantResult] | list[str]:
    """Run a built-in or YAML plan (see :class:`ExperimentRunner`); ``dry_run`` returns the plan lines."""
    plan = load_plan(plan_name)
    if dry_run:
        return describe_plan(plan, Path(out), settings)
    if not settings.data:
        if not settings.tiny:
            raise InputError(None, "a dataset is required (--data); only --tiny defaults to a phantom")
        settings.data = str(tiny_phantom_data(Path(out)))
    if not Path(settings.data).exists():
        raise InputError(settings.data, "dataset does not exist")
    return ExperimentRunner(plan, settings, Path(out), log).run(force=force)

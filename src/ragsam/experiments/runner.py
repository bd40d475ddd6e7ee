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
        done.json               per-organ mean Dice + trainable parameters; present = finished
      table.md, table.csv       ours beside the paper's published values
      figures/                  variants side by side on a central slice; Dice vs rank

``tiny`` swaps every model for its tiny randomly initialised version (SAM
``tiny``, SAM 2 ``tiny``, DINOv2 ``tiny``) and shortens training, so a whole plan
runs on a CPU in minutes; the numbers then show the protocol working, not the method.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ragsam.errors import InputError
from ragsam.experiments.plans import Plan, Variant, load_plan, variant_folder_name
from ragsam.utils.atomic import write_json, write_text

Log = Callable[[str], None]


@dataclass
class ExperimentSettings:
    """What a plan runs with (saved in ``plan.json``; a re-run must agree).

    Attributes:
        data: dataset folder (any layout ``ragsam prepare`` reads).
        tiny: tiny random models and short training (CPU smoke run of the protocol).
        sam_weights / medsam_weights / sam2_weights / embedder: weights for each role.
        base_config: training preset the finetune variants start from.
        size: slice size (None: 512, or 64 with ``tiny``).
        iterations: override of ``optim.max_iterations`` (None: the preset's).
        k: retrieved supports per slice for rag variants.
        device: ``auto`` | ``cpu`` | ``cuda``.
        seed: seeds prompts and training.
    """

    data: str
    tiny: bool = False
    sam_weights: str = "facebook/sam-vit-base"
    medsam_weights: str = "flaviagiammarino/medsam-vit-base"
    sam2_weights: str = "facebook/sam2.1-hiera-tiny"
    embedder: str = "facebook/dinov2-small"
    base_config: str = "samed"
    size: int | None = None
    iterations: int | None = None
    k: int = 4
    device: str = "auto"
    seed: int = 0
    extra_overrides: list[str] = field(default_factory=list)


@dataclass
class VariantResult:
    """A finished variant: per-organ mean Dice (organ name -> [0, 1]) and trainable parameters."""

    name: str
    dice: dict[str, float]
    trainable_parameters: int | None
    predictions: str


def plan_label_map(plan: Plan, settings: ExperimentSettings) -> str:
    """The label scheme the plan trains and scores in (``paper-8:flare22`` ...).

    With ``tiny`` the data (the phantom or the test CT) carries BTCV ids, so the subset is taken of BTCV.
    """
    base = "btcv" if settings.tiny else plan.dataset
    if plan.organs == "paper-8":
        return f"paper-8:{base}"
    return plan.organs


def describe_plan(plan: Plan, out: Path) -> list[str]:
    """One line per variant: kind, what it runs and whether it is finished (for ``--dry-run``)."""
    lines = [f"{plan.name}: {plan.title} (dataset {plan.dataset}, organs {plan.organs})"]
    for v in plan.variants:
        done = (out / "variants" / variant_folder_name(v.name) / "done.json").is_file()
        what = {"finetune": "train + predict " + " ".join(v.overrides),
                "baseline": f"prompted {v.weights.upper()} ({v.prompt})",
                "rag": f"retrieval fused with '{v.base}'"}[v.kind]
        lines.append(f"  [{'done' if done else 'todo'}] {v.name}: {what}")
    return lines


def _check_plan_file(out: Path, plan: Plan, settings: ExperimentSettings, force: bool) -> None:
    record = {"plan": asdict(plan), "settings": asdict(settings)}
    path = out / "plan.json"
    if path.is_file() and not force:
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(record)):
            raise InputError(path, "this folder holds a run of another plan or other settings "
                                   "(use another --out, or --force to start it again)")
    write_json(path, record, force=True)


def _finetune_overrides(variant: Variant, settings: ExperimentSettings, prepared: Path,
                        num_organs: int) -> tuple[str, list[str]]:
    preset = "tiny" if settings.tiny else settings.base_config
    overrides = [f"data.prepared={prepared}", "data.train=[train]", "data.val=[]",
                 f"model.num_classes={num_organs}", f"seed={settings.seed}", f"device={settings.device}",
                 "log.progress=false", *variant.overrides]
    if settings.tiny:
        overrides += ["val.every=0", "checkpoint_every=10"]
    else:
        overrides += [f"model.weights={settings.sam_weights}"]
    if settings.size is not None:
        overrides += [f"model.image_size={settings.size}"]
    if settings.iterations is not None:
        overrides += [f"optim.max_iterations={settings.iterations}", "optim.stop_iteration=null"]
    return preset, overrides + list(settings.extra_overrides)


def _trainable_parameters(run_dir: Path) -> int | None:
    from safetensors import safe_open

    path = run_dir / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return int(sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys()))  # noqa: SIM118


class ExperimentRunner:
    """Runs one plan in one work folder (see the module docstring for the layout)."""

    def __init__(self, plan: Plan, settings: ExperimentSettings, out: Path, log: Log = print) -> None:
        self.plan, self.settings, self.out, self.log = plan, settings, Path(out), log
        self.prepared = self.out / "prepared"
        self.label_map = plan_label_map(plan, settings)

    # -- shared stages -------------------------------------------------------------------
    def prepare(self) -> None:
        """Prepare the dataset (incremental) and write the test ground truth in the plan's ids."""
        from ragsam.data.prepare import prepare_dataset
        from ragsam.data.slices import SliceSettings

        size = self.settings.size or (64 if self.settings.tiny else 512)
        summary = prepare_dataset(self.settings.data, self.prepared, SliceSettings(size=size),
                                  label_map=self.label_map, split="auto", seed=self.settings.seed)
        self.log(f"prepared {len(summary.cases)} cases ({len(summary.built)} built, {len(summary.reused)} reused)")
        self._write_ground_truth()

    def _meta(self) -> dict:
        return json.loads((self.prepared / "prepare.json").read_text())

    def test_cases(self) -> list[str]:
        """Case ids of the test split (every case is test when the split has none)."""
        splits = json.loads((self.prepared / "splits.json").read_text())
        test = list(splits.get("test") or [])
        if not test:
            raise InputError(self.settings.data, "the split has no test cases; a plan needs at least one")
        return sorted(test)

    def _write_ground_truth(self) -> None:
        from ragsam.data.cases import CaseRef, load_case
        from ragsam.data.label_maps import load_label_map
        from ragsam.data.prepare import convert_labels
        from ragsam.data.volume import write_labels

        lmap = load_label_map(self.label_map)
        cases = self._meta()["cases"]
        for cid in self.test_cases():
            target = self.out / "gt" / f"{cid}.nii.gz"
            if target.is_file():
                continue
            case = load_case(CaseRef(cid, Path(cases[cid]["image"]), Path(cases[cid]["labels"])))
            labels = convert_labels(case.labels, lmap)
            write_labels(labels.array, labels.geometry, target, force=True)

    def _image_of(self, case_id: str) -> Path:
        return Path(self._meta()["cases"][case_id]["image"])

    # -- variants --------------------------------------------------------------------------
    def variant_dir(self, variant: Variant) -> Path:
        return self.out / "variants" / variant_folder_name(variant.name)

    def run_variant(self, variant: Variant) -> VariantResult:
        """Run (or resume, or skip when finished) one variant and return its result."""
        folder = self.variant_dir(variant)
        done = folder / "done.json"
        if done.is_file():
            self.log(f"{variant.name}: finished earlier, skipped")
            return VariantResult(**json.loads(done.read_text()))
        predictions = folder / "predictions"
        predictions.mkdir(parents=True, exist_ok=True)
        params = None
        if variant.kind == "finetune":
            params = self._finetune(variant, folder, predictions)
        elif variant.kind == "rag":
            params = self._rag(variant, predictions)
        else:
            self._baseline(variant, folder, predictions)
        dice = self._evaluate(predictions, folder / "evaluation")
        result = VariantResult(variant.name, dice, params, str(predictions))
        write_json(done, asdict(result), force=True)
        return result

    def _finetune(self, variant: Variant, folder: Path, predictions: Path) -> int | None:
        from ragsam.data.label_maps import load_label_map
        from ragsam.inference.predict import predict
        from ragsam.training.config import load_train_config
        from ragsam.training.run import train

        run_dir = folder / "run"
        preset, overrides = _finetune_overrides(variant, self.settings, self.prepared,
                                                load_label_map(self.label_map).num_classes - 1)
        finished = (run_dir / "model.safetensors").is_file() and (run_dir / "val.json").is_file()
        if not finished:
            resume = (run_dir / "checkpoints" / "state.pt").is_file()
            self.log(f"{variant.name}: {'resuming' if resume else 'training'} in {run_dir}")
            cfg = None if resume else load_train_config(preset, overrides)
            train(cfg, run_dir, resume=resume, force=not resume and run_dir.exists())
        for cid in self.test_cases():
            predict(run_dir, self._image_of(cid), predictions / f"{cid}.nii.gz", force=True,
                    device=self.settings.device)
        return _trainable_parameters(run_dir)

    def _bank(self) -> Path:
        from ragsam.retrieval.bank_build import build_bank

        bank = self.out / "bank"
        if not (bank / "bank.json").is_file():
            embedder = "tiny" if self.settings.tiny else self.settings.embedder
            build_bank(self.prepared, bank, embedder_weights=embedder, split="train", force=True)
        return bank

    def _rag(self, variant: Variant, predictions: Path) -> int | None:
        from ragsam.retrieval.segment import RagSegmenter

        base = next(v for v in self.plan.variants if v.name == variant.base)
        base_run = self.variant_dir(base) / "run"
        if not (base_run / "model.safetensors").is_file():
            raise InputError(base_run, f"variant {variant.name!r} needs {base.name!r} trained first")
        bank = self._bank()
        sam2 = "tiny" if self.settings.tiny else self.settings.sam2_weights
        segmenter = RagSegmenter(bank, sam2, device=self.settings.device)  # models and supports shared by the cases
        for cid in self.test_cases():
            segmenter.segment(self._image_of(cid), predictions / f"{cid}.nii.gz", k=self.settings.k,
                              run_dir=base_run, force=True)
        return _trainable_parameters(base_run)

    def _baseline(self, variant: Variant, folder: Path, predictions: Path) -> None:
        from ragsam.baselines.run import run_baseline

        tiny = self.settings.tiny
        weights = "random" if tiny else (self.settings.medsam_weights if variant.weights == "medsam"
                                         else self.settings.sam_weights)
        work = folder / "baseline"
        summary = run_baseline(self.prepared, work, prompt=variant.prompt, weights=weights,
                               arch="tiny" if tiny else "sam_vit_b", seed=self.settings.seed,
                               device=self.settings.device, force=True, cases=self.test_cases(),
                               overlays=False)
        for source in summary.predictions:
            os.replace(source, predictions / Path(source).name)

    def _evaluate(self, predictions: Path, out: Path) -> dict[str, float]:
        from ragsam.evaluation.evaluate import evaluate

        result = evaluate(predictions, self.out / "gt", label_map=self.prepared / "label_map.json",
                          out_dir=out, force=True, images=None)
        table = result.table()
        return {name: float(value) for name, value in zip(table.organ_names, table.mean["dice"], strict=True)}

    # -- the whole plan ----------------------------------------------------------------------
    def run(self, force: bool = False) -> dict[str, VariantResult]:
        """Prepare, run every variant in order (finetune before rag), then write tables and figures."""
        self.out.mkdir(parents=True, exist_ok=True)
        _check_plan_file(self.out, self.plan, self.settings, force)
        if force:
            for variant in self.plan.variants:
                (self.variant_dir(variant) / "done.json").unlink(missing_ok=True)
        self.prepare()
        order = sorted(self.plan.variants, key=lambda v: {"finetune": 0, "rag": 1, "baseline": 2}[v.kind])
        results = {v.name: self.run_variant(v) for v in order}
        self.write_outputs(results)
        return results

    def write_outputs(self, results: dict[str, VariantResult]) -> None:
        """``table.md``/``table.csv`` beside the paper's values, and the figures."""
        from ragsam.experiments.tables import build_table, table_csv, table_markdown

        table = build_table(self.plan, {n: r.dice for n, r in results.items()},
                            {n: r.trainable_parameters for n, r in results.items()})
        note = ("\n> Tiny randomly initialised models on small data: these numbers show the protocol "
                "working, not the method's accuracy.\n" if self.settings.tiny else "")
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
        return describe_plan(plan, Path(out))
    if not settings.data:
        if not settings.tiny:
            raise InputError(None, "a dataset is required (--data); only --tiny defaults to a phantom")
        settings.data = str(tiny_phantom_data(Path(out)))
    if not Path(settings.data).exists():
        raise InputError(settings.data, "dataset does not exist")
    return ExperimentRunner(plan, settings, Path(out), log).run(force=force)

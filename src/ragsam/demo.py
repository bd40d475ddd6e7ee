"""``run_demo``: the whole method in one call (``ragsam demo``), on a phantom or the user's CT.

Stages, each through the public API of its module::

    phantom dataset (or --data DIR)  ragsam.data.phantom.write_phantom_dataset
    prepare slice cache              ragsam.data.prepare.prepare_dataset (split "auto")
    fine-tune                        ragsam.training.train: LoRA rank 4 (SAMed) on SAM ViT-B when its
                                     weights are in the Hugging Face cache, else on the shipped tiny SAM
    predict test cases               ragsam.inference.predict
    build support bank (train cases) ragsam.retrieval.bank_build.build_bank
    segment test cases with RAG      ragsam.retrieval.segment.RagSegmenter
    hybrid                            RagSegmenter.segment(run_dir=<fine-tuned run>)
    episodic SAM 2 fine-tuning       ragsam.training.rag_run.train_rag: LoRA rank 4 on the demo's SAM 2,
                                     episodes from the training cases and the bank (own case excluded)
    segment with the trained SAM 2   RagSegmenter(sam2_run=<rag_run>)
    evaluate every method            ragsam.evaluation.evaluate.evaluate
    report.md + summary.json

The output folder::

    <out>/report.md, summary.json
    <out>/data/                 the phantom dataset (only without --data)
    <out>/prepared/ run/ bank/  slice cache, fine-tuned run, support bank (reusable by the CLI)
    <out>/rag_run/              episodically fine-tuned SAM 2 run (``ragsam segment --sam2-run``)
    <out>/predictions/<method>/<case>.nii.gz
    <out>/ground_truth/<case>.<ext>
    <out>/evaluation/<method>/  metrics.csv/json, report.md, overlays/<case>.png

The folder is built next to ``<out>`` and moved into place when complete
(``ragsam.utils.atomic.atomic_dir``): an interrupted demo leaves nothing
half-written, and an existing ``<out>`` is replaced only with ``force``.

Nothing is downloaded. Public pretrained weights are used when they are already in
the Hugging Face cache (``sam-vit-b``, ``sam2.1-tiny``, ``dinov2-small``); otherwise
the demo uses ragsam's shipped tiny models (:mod:`ragsam.hub.tiny_models`: a tiny
SAM, SAM 2 and slice embedder pre-trained by ``ragsam pretrain-tiny`` on synthetic
phantoms that share no case with the demo) and says so in the report: those numbers
show that every method learns on phantoms, not how accurate the method is on CT.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragsam.demo_report import MethodScore, WeightsUsed, render_report
from ragsam.demo_stages import evaluate_method, fine_tune_and_predict, retrieve
from ragsam.errors import InputError
from ragsam.utils.atomic import atomic_dir, check_writable, write_json, write_text

if TYPE_CHECKING:
    from ragsam.data.cache_meta import CachedCase

STAGES = ("data", "prepare", "fine-tune", "predict", "bank", "rag", "hybrid", "train-rag", "rag-trained",
          "evaluate")


@dataclass(frozen=True)
class DemoBudget:
    """How much work the demo does (named presets in :data:`BUDGETS`).

    Attributes:
        cases: phantom cases written (ignored with ``data``); the BTCV paper split of
            ``prepare`` keeps one test case in five (6 cases -> 5 train / 1 test).
        shape: phantom ``(z, y, x)`` voxels. spacing_mm: phantom ``(z, y, x)`` spacing (mm).
        size: slice side S in pixels fed to the fine-tuned model (multiple of 16).
        iterations: fine-tuning optimiser steps. batch_size: slices per step. lr: peak learning rate.
        k: retrieved support slices per query slice.
        max_test_cases: at most this many test cases are predicted and evaluated.
        rag_iterations, rag_batch_size, rag_lr: episodic fine-tuning of SAM 2 (``ragsam train-rag``,
            LoRA rank 4 + full decoder): optimiser steps, episodes per step, peak learning rate.
    """

    cases: int = 6
    shape: tuple[int, int, int] = (24, 96, 96)
    spacing_mm: tuple[float, float, float] = (6.0, 4.0, 4.0)
    size: int = 64
    iterations: int = 300
    batch_size: int = 8
    lr: float = 0.005
    k: int = 2
    max_test_cases: int = 1
    rag_iterations: int = 60
    rag_batch_size: int = 2
    rag_lr: float = 0.002


BUDGETS: dict[str, DemoBudget] = {
    # 6 phantoms (5 train / 1 test); LoRA rank 4 on the pre-trained tiny SAM: 300 steps of 8 slices
    # take ~19 s of CPU (1 thread). Retrieval costs ~0.2 s of CPU per slice with k = 2.
    "standard": DemoBudget(),
    # smaller phantoms, one small test case, k = 1: the CI smoke run
    "quick": DemoBudget(cases=4, shape=(16, 64, 64), spacing_mm=(8.0, 6.0, 6.0), size=64, iterations=150,
                        k=1, max_test_cases=1),
}


@dataclass
class DemoSummary:
    """What :func:`run_demo` did (JSON-serialisable through :meth:`to_json`).

    Attributes:
        out_dir: the demo folder. report: its ``report.md``.
        source: ``"phantom"`` or the dataset path given.
        train_cases / test_cases: case ids used for fine-tuning + the bank / for evaluation.
        weights: which weights every stage used.
        methods: one Dice summary per evaluated method (``finetuned``, ``rag``, ``hybrid``, ``rag-trained``).
        stages: stage name -> wall seconds. seconds: total wall seconds.
        notes: stages left out and why.
        budget: the :class:`DemoBudget` used.
    """

    out_dir: Path
    report: Path
    source: str
    train_cases: list[str]
    test_cases: list[str]
    weights: WeightsUsed
    methods: list[MethodScore]
    stages: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    budget: DemoBudget = field(default_factory=DemoBudget)

    def method(self, name: str) -> MethodScore:
        """The score of method ``name``. Raises KeyError when it was not run."""
        for m in self.methods:
            if m.method == name:
                return m
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"], d["report"] = str(self.out_dir), str(self.report)
        return d


def cached_hf_folder(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The local snapshot of a Hugging Face repository if it is in the cache, else ``None``.

    Never touches the network (``local_files_only``), so the demo stays offline.
    ``cache_dir`` defaults to the Hugging Face cache (``HF_HUB_CACHE``).
    """
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached, partially cached, or no huggingface_hub: all mean "not available"
        return None


def detect_weights(cache_dir: str | os.PathLike | None = None,
                   tiny_root: str | os.PathLike | None = None) -> WeightsUsed:
    """Public weights already in the Hugging Face cache; ragsam's shipped tiny models otherwise.

    The tiny models (:mod:`ragsam.hub.tiny_models`, pre-trained by ``ragsam pretrain-tiny`` on
    synthetic phantoms) are checked against their manifest before use. ``tiny_root`` replaces
    the shipped folder (tests).
    """
    from ragsam.hub.presets import get_preset
    from ragsam.hub.tiny_models import TINY_MODELS_DIR, tiny_models

    found = {name: cached_hf_folder(get_preset(name).hf_repo or "", cache_dir)
             for name in ("sam-vit-b", "sam2.1-tiny", "dinov2-small")}
    sam, sam2, dino = found["sam-vit-b"], found["sam2.1-tiny"], found["dinov2-small"]
    tiny = None if sam and sam2 and dino else tiny_models(tiny_root or TINY_MODELS_DIR)
    synthetic = "pre-trained by ragsam on synthetic phantoms (resources/tiny_models)"
    return WeightsUsed(
        sam_arch="sam_vit_b" if sam else "tiny",
        sam_weights=str(sam) if sam else str(tiny.sam),
        sam_label="SAM ViT-B (facebook/sam-vit-base), LoRA rank 4" if sam
        else f"tiny SAM {synthetic}, LoRA rank 4",
        sam2_weights=str(sam2) if sam2 else str(tiny.sam2),
        sam2_label="SAM 2.1 Hiera-T (facebook/sam2.1-hiera-tiny)" if sam2 else f"tiny SAM 2 {synthetic}",
        embedder_weights=str(dino) if dino else str(tiny.embedder),
        embedder_label="DINOv2 ViT-S/14 (facebook/dinov2-small)" if dino
        else f"tiny DINOv2-architecture slice embedder {synthetic}",
        pretrained={"sam": sam is not None, "sam2": sam2 is not None, "embedder": dino is not None},
        embedder_image_size=224 if dino else tiny.embedder_image_size,
    )


def _budget(budget: DemoBudget | str, iterations: int | None) -> DemoBudget:
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise InputError(None, f"unknown demo budget {budget!r} (choose {', '.join(BUDGETS)})")
        budget = BUDGETS[budget]
    if iterations is not None:
        if iterations < 1:
            raise InputError(None, f"iterations must be >= 1, got {iterations}")
        budget = replace(budget, iterations=int(iterations))
    if budget.size % 16 or budget.size < 32:
        raise InputError(None, f"slice size must be a multiple of 16 and >= 32, got {budget.size}")
    return budget


def _copy_labels(cases: dict[str, CachedCase], ids: list[str], folder: Path) -> None:
    """Copy each test case's label file to ``folder/<case_id><ext>`` (names the evaluator pairs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        src = Path(str(cases[cid].labels))
        ext = ".nii.gz" if src.name.lower().endswith(".nii.gz") else src.suffix
        shutil.copyfile(src, folder / f"{cid}{ext}")


def _link_images(cases: dict[str, CachedCase], ids: list[str], folder: Path) -> None:
    """Symbolic links ``folder/<case_id>[<ext>]`` to each test image (for overlays; no copy of big CT)."""
    folder.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        src = Path(str(cases[cid].image))
        ext = "" if src.is_dir() else (".nii.gz" if src.name.lower().endswith(".nii.gz") else src.suffix)
        (folder / f"{cid}{ext}").symlink_to(src.resolve(), target_is_directory=src.is_dir())


def run_demo(
    data: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = "demo-output",
    force: bool = False,
    device: str = "cpu",
    budget: DemoBudget | str = "standard",
    iterations: int | None = None,
    seed: int = 0,
    label_map: str = "btcv",
    on_stage: Callable[[str, str], None] | None = None,
) -> DemoSummary:
    """Prepare, fine-tune, build the bank, segment with retrieval, evaluate and report.

    Args:
        data: a labelled dataset (any layout ``discover_cases`` reads, >= 2 labelled cases);
            ``None`` writes a synthetic phantom dataset into ``<out>/data``.
        out_dir: the demo folder (see the module docstring).
        force: replace an existing ``out_dir``.
        device: ``cpu``, ``auto``, ``cuda`` or ``cuda:N`` for training and inference.
        budget: ``"standard"``, ``"quick"`` (see :data:`BUDGETS` for timings) or a
            :class:`DemoBudget`.
        iterations: override the budget's fine-tuning iterations.
        seed: phantom and training seed.
        label_map: label ids of ``data`` (``btcv``, ``flare22`` or a label-map JSON; the phantom is BTCV).
        on_stage: called as ``on_stage(stage, message)`` when a stage starts (for progress output).
    Returns:
        :class:`DemoSummary`.
    Raises:
        OutputExistsError: ``out_dir`` exists and ``force`` is false (checked before any work).
        InputError: a bad dataset (fewer than 2 labelled cases, unreadable files), bad budget.
    """
    from ragsam.data.cache_meta import CacheMeta
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import prepare_dataset
    from ragsam.data.slices import SliceSettings

    start = time.perf_counter()
    plan = _budget(budget, iterations)
    out = Path(out_dir)
    check_writable(out, force)
    if data is not None and not Path(data).exists():
        raise InputError(data, "does not exist")
    stages: dict[str, float] = {}
    notes: list[str] = []

    def stage(name: str, message: str) -> Callable[[], None]:
        if on_stage is not None:
            on_stage(name, message)
        t0 = time.perf_counter()
        return lambda: stages.__setitem__(name, round(time.perf_counter() - t0, 2))

    weights = detect_weights()
    with atomic_dir(out, force=force) as tmp, tempfile.TemporaryDirectory(prefix="ragsam-demo-") as scratch:
        done = stage("data", "writing the phantom dataset" if data is None else f"reading {data}")
        source = Path(data) if data is not None else write_phantom_dataset(
            tmp / "data", n_cases=plan.cases, layout="btcv", seed=seed, shape=plan.shape,
            spacing_mm=plan.spacing_mm)
        done()

        done = stage("prepare", f"preparing {plan.size} px slices")
        prepared = prepare_dataset(source, tmp / "prepared", SliceSettings(size=plan.size),
                                   label_map=label_map if data is not None else "btcv", split="auto")
        done()
        train_ids, test_ids = list(prepared.splits["train"]), list(prepared.splits.get("test", []))
        if not test_ids:
            raise InputError(source, f"the demo needs at least 2 labelled cases (train + test), found {len(train_ids)}")
        test_ids = test_ids[: plan.max_test_cases]
        cases = CacheMeta.read(tmp / "prepared").cases
        organs = sorted(prepared.organ_slices)

        done = stage("fine-tune", f"fine-tuning {weights.sam_label} for {plan.iterations} iterations")
        scores = fine_tune_and_predict(tmp, plan, weights, device, seed, cases, test_ids, stage, done)

        done = stage("bank", f"building the support bank from {len(train_ids)} training cases")
        from ragsam.retrieval.bank_build import build_bank

        build_bank(tmp / "prepared", tmp / "bank", embedder_weights=weights.embedder_weights, split="train",
                   image_size=weights.embedder_image_size,
                   device=None if device == "auto" else device)
        done()
        scores += retrieve(tmp, plan, weights, device, seed, cases, test_ids, stage, notes)

        done = stage("evaluate", f"evaluating {len(scores)} methods on {len(test_ids)} test case(s)")
        _copy_labels(cases, test_ids, tmp / "ground_truth")
        _link_images(cases, test_ids, Path(scratch) / "images")
        lmap = label_map if data is not None else "btcv"
        methods = [evaluate_method(tmp, name, organs, Path(scratch) / "images", t, lmap) for name, t in scores]
        done()

        summary = DemoSummary(out_dir=out, report=out / "report.md",
                              source="phantom" if data is None else str(Path(data).resolve()),
                              train_cases=train_ids, test_cases=test_ids, weights=weights, methods=methods,
                              stages=stages, notes=notes, budget=plan)
        summary.seconds = round(time.perf_counter() - start, 2)
        write_text(tmp / "report.md", render_report(summary))
        write_json(tmp / "summary.json", summary.to_json())
    return summary

"""``run_demo``: the whole method in one call (``ragsam demo``), on a phantom or the user's CT.

Stages, each through the public API of its module::

    phantom dataset (or --data DIR)  ragsam.data.phantom.write_phantom_dataset
    prepare slice cache              ragsam.data.prepare.prepare_dataset (split "auto")
    fine-tune                        ragsam.training.train: LoRA rank 4 (SAMed) on SAM ViT-B when its
                                     weights are in the Hugging Face cache, else on the shipped tiny SAM
    predict test cases               ragsam.inference.predict
    build support bank (train cases) ragsam.retrieval.bank_build.build_bank
    segment test cases with RAG      ragsam.inference.rag_segment.load_segmenter (a RagSegmenter)
    hybrid                            RagSegmenter.segment(SegmentOptions(run_dir=<fine-tuned run>))
    episodic SAM 2 fine-tuning       ragsam.training.rag_run.train_rag: LoRA rank 4 on the demo's SAM 2,
                                     episodes from the training cases and the bank (own case excluded)
    segment with the trained SAM 2   ragsam.inference.rag_segment.load_segmenter(bank, SegmenterOptions(sam2_run=<rag_run>))
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
from pathlib import Path
from typing import TYPE_CHECKING

from ragsam.demo.budget import DemoBudget, resolve_budget
from ragsam.demo.report import render_report
from ragsam.demo.stages import evaluate_method, fine_tune_and_predict, retrieve
from ragsam.demo.summary import DemoSummary
from ragsam.errors import InputError
from ragsam.hub.detect import detect_weights
from ragsam.utils.atomic import atomic_dir, check_writable, write_json, write_text

if TYPE_CHECKING:
    from ragsam.data.cache_meta import CachedCase

STAGES = ("data", "prepare", "fine-tune", "predict", "bank", "rag", "hybrid", "train-rag", "rag-trained",
          "evaluate")


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
        budget: ``"standard"``, ``"quick"`` (see :data:`ragsam.demo.budget.BUDGETS` for timings) or a
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
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    start = time.perf_counter()
    plan = resolve_budget(budget, iterations)
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
        prepared = prepare_dataset(source, tmp / "prepared",
                                   PrepareOptions(settings=SliceSettings(size=plan.size),
                                   label_map=label_map if data is not None else "btcv", split="auto"))
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
        from ragsam.retrieval.bank_build import BankOptions, build_bank

        build_bank(tmp / "prepared", tmp / "bank", BankOptions(embedder_weights=weights.embedder_weights,
                   split="train", image_size=weights.embedder_image_size,
                   device=None if device == "auto" else device))
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

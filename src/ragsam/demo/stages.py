"""The demo's method stages: fine-tune + predict, retrieval (training-free and hybrid), evaluation.

Each function runs one row of the demo's table through the public API of its module
(:mod:`ragsam.training`, :mod:`ragsam.inference`, :mod:`ragsam.retrieval.segment`,
:mod:`ragsam.evaluation.evaluate`); :func:`ragsam.demo.run.run_demo` calls them in order.
The training runs start from a packaged preset changed as a typed configuration
(:func:`train_config`, :func:`rag_config`: ``dataclasses.replace``, then the preset's validator).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ragsam.demo.budget import DemoBudget
from ragsam.demo.summary import MethodScore
from ragsam.errors import InputError
from ragsam.hub.detect import WeightsUsed

if TYPE_CHECKING:
    from ragsam.training.config import TrainConfig
    from ragsam.training.rag_config import RagTrainConfig

PRETRAINED_SIZE = 256


def train_config(budget: DemoBudget, weights: WeightsUsed, prepared: Path, device: str, seed: int) -> TrainConfig:
    """The ``tiny`` training preset changed for the demo run: SAMed's LoRA rank 4 on the demo's SAM."""
    from ragsam.training.config import load_train_config, validate

    base = load_train_config("tiny")
    n = budget.iterations
    # ViT-B at a demo-sized 64 px would see 4 x 4 patches; pretrained SAM gets 256 px (16 x 16)
    size = max(budget.size, PRETRAINED_SIZE) if weights.pretrained["sam"] else budget.size
    # SAMed: LoRA rank 4 on q, v; the decoder fully trainable (on SAM ViT-B or the tiny pre-trained SAM)
    peft = replace(base.model.peft, method="lora", rank=4, decoder="full")
    cfg = replace(
        base,
        data=replace(base.data, prepared=str(prepared), train=["train"], val=[]),
        model=replace(base.model, image_size=size, arch=weights.sam_arch, weights=weights.sam_weights, peft=peft),
        optim=replace(base.optim, max_iterations=n, stop_iteration=None, batch_size=budget.batch_size,
                      lr=budget.lr, warmup=max(1, n // 20), weight_decay=0.01),
        # the slices are in one canonical orientation (LPS): rot90/flip would swap left and right organs
        augment=replace(base.augment, enabled=False),
        val=replace(base.val, every=0), checkpoint_every=n,
        log=replace(base.log, every=max(1, n // 20), progress=False, tensorboard=False),
        device=device, seed=seed,
    )
    return validate(cfg, "<demo budget>")


def rag_config(budget: DemoBudget, weights: WeightsUsed, bank: Path, device: str, seed: int) -> RagTrainConfig:
    """The ``rag_tiny`` preset changed for the demo: LoRA r=4 + full decoder on the demo's SAM 2.

    Episodes come from the demo's training cases with the demo's bank (the query's own case
    excluded from its supports, as ``segment``), ``k`` as the RAG row; no validation split.
    """
    from ragsam.training.rag_config import load_rag_config, validate_rag

    base = load_rag_config("rag_tiny")
    n = budget.rag_iterations
    cfg = replace(
        base,
        data=replace(base.data, bank=str(bank), train=["train"], val=[], k=budget.k),
        model=replace(base.model, weights=weights.sam2_weights,
                      peft=replace(base.model.peft, method="lora", rank=4, decoder="full")),
        optim=replace(base.optim, max_iterations=n, stop_iteration=None, batch_size=budget.rag_batch_size,
                      lr=budget.rag_lr, warmup=max(1, n // 20)),
        val=replace(base.val, every=0), checkpoint_every=n,
        log=replace(base.log, every=max(1, n // 10), progress=False, tensorboard=False),
        device=device, seed=seed,
    )
    return validate_rag(cfg, "<demo budget>")


def fine_tune_and_predict(tmp: Path, plan: DemoBudget, weights: WeightsUsed, device: str, seed: int,
                           cases: dict, test_ids: list[str], stage: Callable, done: Callable) -> list[tuple[str, float]]:
    """Train the run in ``tmp/run`` and predict the test cases; returns ``[("finetuned", seconds)]``."""
    from ragsam.inference import PredictOptions, predict
    from ragsam.training import train

    train(train_config(plan, weights, tmp / "prepared", device, seed), tmp / "run")
    done()
    finish = stage("predict", f"predicting {len(test_ids)} test case(s) with the fine-tuned model")
    t0 = time.perf_counter()
    for cid in test_ids:
        predict(tmp / "run", str(cases[cid].image), tmp / "predictions" / "finetuned" / f"{cid}.nii.gz",
                PredictOptions(device=device))
    finish()
    return [("finetuned", time.perf_counter() - t0)]


def retrieve(tmp: Path, plan: DemoBudget, weights: WeightsUsed, device: str, seed: int, cases: dict,
             test_ids: list[str], stage: Callable, notes: list[str]) -> list[tuple[str, float]]:
    """RAG, hybrid and trained-RAG segmentation of the test cases (one :class:`RagSegmenter` per method).

    Before the trained-RAG row, :func:`train_retrieval` fine-tunes SAM 2 episodically on the
    training cases (``tmp/rag_run``); its segmenter loads that run (``sam2_run``).
    """
    from ragsam.inference.rag_segment import SegmenterOptions, load_segmenter
    from ragsam.retrieval.segment import SegmentOptions
    from ragsam.utils.device import resolve_device

    seg_device = str(resolve_device(device))
    runs: list[tuple[str, dict, Path | None]] = [("rag", {}, None), ("hybrid", {"run_dir": tmp / "run"}, None),
                                                 ("rag-trained", {}, tmp / "rag_run")]
    labels = {"rag": "retrieval + SAM 2 memory", "hybrid": "hybrid (fine-tuned + retrieval)",
              "rag-trained": "retrieval + episodically fine-tuned SAM 2"}
    results = []
    for name, extra, sam2_run in runs:
        if sam2_run is not None:
            done = stage("train-rag", f"episodic fine-tuning of {weights.sam2_label} for {plan.rag_iterations} "
                                      "iterations (LoRA rank 4)")
            train_retrieval(tmp, plan, weights, device, seed)
            done()
        done = stage(name, f"segmenting {len(test_ids)} test case(s): {labels[name]}")
        t0 = time.perf_counter()
        try:
            segmenter = load_segmenter(tmp / "bank", SegmenterOptions(weights.sam2_weights, sam2_run,
                                                                      device=seg_device))  # shared by the cases
            options = SegmentOptions(k=plan.k, **extra)
            for cid in test_ids:
                segmenter.segment(str(cases[cid].image), tmp / "predictions" / name / f"{cid}.nii.gz", options)
        except InputError as exc:
            if name != "hybrid":
                raise
            notes.append(f"hybrid: left out - {exc}")
            shutil.rmtree(tmp / "predictions" / name, ignore_errors=True)
            done()
            continue
        done()
        results.append((name, time.perf_counter() - t0))
    return results


def train_retrieval(tmp: Path, plan: DemoBudget, weights: WeightsUsed, device: str, seed: int) -> Path:
    """Episodic fine-tuning of the demo's SAM 2 (``ragsam train-rag``) into ``tmp/rag_run``."""
    from ragsam.training.rag_run import train_rag

    return train_rag(rag_config(plan, weights, tmp / "bank", device, seed), tmp / "rag_run")


def evaluate_method(tmp: Path, method: str, organs: list[int], images: Path, seconds: float,
              label_map: str) -> MethodScore:
    """Dice/HD95/NSD of one method's predictions -> ``tmp/evaluation/<method>``; its Dice summary."""
    from ragsam.evaluation.evaluate import EvaluationOptions, evaluate

    result = evaluate(tmp / "predictions" / method, tmp / "ground_truth",
                      EvaluationOptions(label_map=label_map, organs=organs),
                      out_dir=tmp / "evaluation" / method, images=images)
    table = result.table()
    return MethodScore(
        method=method,
        mean_dice=float(table.overall["dice"]),
        organ_dice={name: float(v) for name, v in zip(table.organ_names, table.mean["dice"], strict=True)},
        predictions=f"predictions/{method}",
        evaluation=f"evaluation/{method}",
        overlays={cid: f"evaluation/{method}/{rel}" for cid, rel in result.overlays.items()},
        seconds=round(seconds, 2),
    )

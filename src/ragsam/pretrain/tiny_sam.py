"""Pre-train the tiny SAM: prompt-free multi-organ segmentation of the corpus, from random weights.

The same code as ``ragsam train`` (``ragsam.training.train``) with the ``tiny``
architecture, every weight trainable (there is nothing pretrained to protect), then
the run is written as a Hugging Face SAM folder (``ragsam.models.export.merge_run``),
which ``model.weights=<folder>`` loads strictly like any published SAM checkpoint.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ragsam.pretrain.settings import PretrainSettings

if TYPE_CHECKING:
    from ragsam.training.config import TrainConfig


def sam_config(settings: PretrainSettings, prepared: Path) -> TrainConfig:
    """The ``tiny`` training preset changed for corpus pre-training (random start, every weight trained)."""
    from ragsam.training.config import load_train_config, validate

    base = load_train_config("tiny")
    n = settings.sam_iterations
    cfg = replace(
        base,
        data=replace(base.data, prepared=str(prepared), train=["train"], val=[], num_workers=0),
        model=replace(base.model, arch="tiny", weights="random", num_classes=13, image_size=settings.size,
                      peft=replace(base.model.peft, method="none")),
        optim=replace(base.optim, max_iterations=n, stop_iteration=None, batch_size=settings.sam_batch,
                      lr=settings.sam_lr, warmup=max(1, n // 20), weight_decay=0.01),
        # slices are in one canonical orientation (LPS): rot90 / flips would swap left and right organs
        augment=replace(base.augment, enabled=False),
        val=replace(base.val, every=0), checkpoint_every=n,
        log=replace(base.log, every=max(1, n // 20), progress=False, tensorboard=False),
        device="cpu", seed=settings.seed,
    )
    return validate(cfg, "<pretrain settings>")


def pretrain_sam(settings: PretrainSettings, prepared: Path, run_dir: Path, out_dir: Path) -> dict[str, float]:
    """Train the tiny SAM on ``prepared`` (run folder ``run_dir``) and save it as a SAM folder ``out_dir``.

    Returns:
        ``{"first_loss", "last_loss"}``: the training loss of the first and last logged rows.
    """
    from ragsam.models.export import merge_run
    from ragsam.training import train

    train(sam_config(settings, prepared), run_dir)
    merge_run(run_dir, out_dir)
    with open(run_dir / "log.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    return {"first_loss": float(rows[0]["loss"]), "last_loss": float(rows[-1]["loss"])} if rows else {}

"""Pre-train the tiny SAM: prompt-free multi-organ segmentation of the corpus, from random weights.

The same code as ``ragsam train`` (``ragsam.training.train``) with the ``tiny``
architecture, every weight trainable (there is nothing pretrained to protect), then
the run is written as a Hugging Face SAM folder (``ragsam.models.export.merge_run``),
which ``model.weights=<folder>`` loads strictly like any published SAM checkpoint.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ragsam.pretrain.settings import PretrainSettings


def sam_overrides(settings: PretrainSettings, prepared: Path) -> list[str]:
    """``key=value`` overrides of the ``tiny`` training preset for corpus pre-training."""
    n = settings.sam_iterations
    return [
        f"data.prepared={prepared}", "data.train=[train]", "data.val=[]", "data.num_workers=0",
        "model.arch=tiny", "model.weights=random", "model.num_classes=13", f"model.image_size={settings.size}",
        "model.peft.method=none",
        f"optim.max_iterations={n}", "optim.stop_iteration=null", f"optim.batch_size={settings.sam_batch}",
        f"optim.lr={settings.sam_lr}", f"optim.warmup={max(1, n // 20)}", "optim.weight_decay=0.01",
        # slices are in one canonical orientation (LPS): rot90 / flips would swap left and right organs
        "augment.enabled=false",
        "val.every=0", f"checkpoint_every={n}", f"log.every={max(1, n // 20)}", "log.progress=false",
        "log.tensorboard=false", "device=cpu", f"seed={settings.seed}",
    ]


def pretrain_sam(settings: PretrainSettings, prepared: Path, run_dir: Path, out_dir: Path) -> dict[str, float]:
    """Train the tiny SAM on ``prepared`` (run folder ``run_dir``) and save it as a SAM folder ``out_dir``.

    Returns:
        ``{"first_loss", "last_loss"}``: the training loss of the first and last logged rows.
    """
    from ragsam.models.export import merge_run
    from ragsam.training import load_train_config, train

    cfg = load_train_config("tiny", sam_overrides(settings, prepared))
    train(cfg, run_dir)
    merge_run(run_dir, out_dir)
    with open(run_dir / "log.csv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    return {"first_loss": float(rows[0]["loss"]), "last_loss": float(rows[-1]["loss"])} if rows else {}

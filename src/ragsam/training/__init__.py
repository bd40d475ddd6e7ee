"""Training: configuration, SAMed loss / schedule / augmentation, the resumable DDP loop.

Public API::

    from ragsam.training import TrainConfig, load_train_config, train
    cfg = load_train_config("samed", ["data.prepared=prepared/btcv"])
    run_dir = train(cfg, "runs/samed")            # resume: train(None, "runs/samed", resume=True)

Imports torch, numpy and yaml only (no SimpleITK / MONAI).
"""

from ragsam.training.config import TrainConfig, load_train_config
from ragsam.training.losses import DiceCELoss, dice_loss
from ragsam.training.run import train
from ragsam.training.schedule import WarmupPoly

__all__ = ["DiceCELoss", "TrainConfig", "WarmupPoly", "dice_loss", "load_train_config", "train"]

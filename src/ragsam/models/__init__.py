"""SAM models for multi-organ CT segmentation: registry, weight loading, the prompt-free model.

Public API::

    from ragsam.models import ModelConfig, PeftConfig, build_model
    model = build_model(ModelConfig(arch="sam_vit_b", weights="facebook/sam-vit-base", num_classes=13))
    logits = model(images)             # (B, 3, S, S) in [0, 1] -> (B, K + 1, S, S)

PEFT helpers (``trainable_state_dict``, ``save_trainable``, ``load_trainable``,
``merge_peft``, ``count_parameters``) live in :mod:`ragsam.peft` and are
re-exported here.
"""

from ragsam.models.build import build_model, build_sam_model
from ragsam.models.config import ModelConfig
from ragsam.models.registry import ARCHITECTURES
from ragsam.models.sam import MultiOrganSam
from ragsam.peft.apply import (
    apply_peft,
    count_parameters,
    load_trainable,
    merge_peft,
    save_trainable,
    trainable_state_dict,
)
from ragsam.peft.config import PeftConfig

__all__ = [
    "ARCHITECTURES", "ModelConfig", "MultiOrganSam", "PeftConfig", "apply_peft", "build_model",
    "build_sam_model", "count_parameters", "load_trainable", "merge_peft", "save_trainable",
    "trainable_state_dict",
]

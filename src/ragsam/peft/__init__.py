"""Parameter-efficient fine-tuning of SAM: LoRA (SAMed / SAMed_s) and Med-SA adapters."""

from ragsam.peft.apply import (
    apply_peft,
    count_parameters,
    has_adapters,
    load_trainable,
    merge_peft,
    save_trainable,
    trainable_state_dict,
)
from ragsam.peft.config import PeftConfig

__all__ = ["PeftConfig", "apply_peft", "count_parameters", "has_adapters", "load_trainable", "merge_peft", "save_trainable",
           "trainable_state_dict"]

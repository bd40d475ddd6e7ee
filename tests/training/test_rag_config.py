"""RagTrainConfig: the train-rag presets, and refusals quoting the bad value."""

from __future__ import annotations

import pytest

from ragsam.errors import InputError
from ragsam.training.config import preset_names
from ragsam.training.rag_config import load_rag_config


def test_rag_presets_are_separate_from_train_presets():
    assert preset_names("rag") == ["rag_full", "rag_lora", "rag_tiny"]
    assert not any(n.startswith("rag_") for n in preset_names())
    lora = load_rag_config("rag_lora")
    assert (lora.model.peft.method, lora.model.peft.rank, lora.model.peft.targets) == ("lora", 4, ["q", "v"])
    assert (lora.model.peft.decoder, lora.optim.dice_weight, lora.optim.ce_weight) == ("full", 0.8, 0.2)
    assert load_rag_config("rag_full").model.peft.method == "none"
    with pytest.raises(InputError, match="rag_full, rag_lora, rag_tiny"):
        load_rag_config("samed")  # a `ragsam train` preset is not a train-rag one


@pytest.mark.parametrize("override, needle", [
    ("data.k=0", "data.k=0"),
    ("model.peft.method=adapter", "model.peft.method='adapter'"),
    ("model.peft.targets=[mlp]", "model.peft.targets=['mlp']"),
    ("model.pointer_positions=random", "model.pointer_positions='random'"),
    ("data.z_prior=-1", "data.z_prior=-1"),
    ("model.peft.rank=0", "model.peft.rank must be at least 1, got 0"),  # the rank rule SAM's PeftConfig uses
    ("model.peft.decoder_rank=0", "model.peft.decoder_rank must be at least 1, got 0"),
])
def test_bad_values_are_refused_quoting_them(override, needle):
    with pytest.raises(InputError) as info:
        load_rag_config("rag_tiny", [override])
    assert needle in info.value.problem

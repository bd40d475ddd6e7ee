"""Pre-training of the tiny foundation models the demo ships with (``ragsam pretrain-tiny``)."""

from ragsam.pretrain.settings import PRESETS, PretrainSettings, get_settings

__all__ = ["PRESETS", "PretrainSettings", "get_settings", "pretrain_tiny"]


def __getattr__(name: str):  # the runner imports the data and retrieval stack: only when used
    if name == "pretrain_tiny":
        from ragsam.pretrain.run import pretrain_tiny

        return pretrain_tiny
    raise AttributeError(name)

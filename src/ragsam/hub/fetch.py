"""Fetch presets into the Hugging Face cache (checking local copies: :mod:`ragsam.hub.verify`)."""

from __future__ import annotations

from pathlib import Path

from ragsam.errors import MissingWeightsError
from ragsam.models.presets import WeightPreset, get_preset


def pull_weights(name: str, cache_dir: str | None = None) -> Path:
    """Download preset ``name`` with huggingface_hub; return the local folder.

    Raises:
        MissingWeightsError: no network (or the hub refused); the one-line message
            says what to download and where to put it.
    """
    preset = get_preset(name)
    if preset.hf_repo is None:
        raise MissingWeightsError(_manual_hint(preset))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(preset.hf_repo, cache_dir=cache_dir))
    except Exception as exc:  # offline, DNS failure, HTTP error: all end the same way for the user
        reason = type(exc).__name__
        raise MissingWeightsError(f"could not download {preset.hf_repo} ({reason}). {_manual_hint(preset)}") from None


def _manual_hint(preset: WeightPreset) -> str:
    parts = []
    if preset.hf_repo:
        parts.append(f"on a machine with internet run `huggingface-cli download {preset.hf_repo} --local-dir "
                     f"weights/{preset.name}`, copy that folder here and pass --weights weights/{preset.name}")
    if preset.official_url:
        parts.append(f"or fetch {preset.official_url} and pass that file to --weights")
    return "; ".join(parts) if parts else f"no download address is known for {preset.name}"

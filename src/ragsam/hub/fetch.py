"""Fetch presets into the Hugging Face cache, and check local copies against them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ragsam.errors import InputError, MissingWeightsError
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


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _dotted(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def verify_weights(path: str | Path, name: str) -> list[str]:
    """Check a local folder or file against preset ``name``.

    A Hugging Face folder: ``config.json`` carries the preset's facts and a
    readable weight file is present. An official ``.pth``/``.pt`` file: its
    SHA-256 starts with the preset's prefix (where known) and, loaded safely,
    it holds the preset's key tensor with the right shape.

    Returns:
        The checks that passed, one line each.
    Raises:
        InputError: the first check that fails, naming the file and what differs.
    """
    preset = get_preset(name)
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    return _verify_folder(path, preset) if path.is_dir() else _verify_file(path, preset)


def _verify_folder(path: Path, preset: WeightPreset) -> list[str]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError(path, "no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(config_path, f"not valid JSON ({exc.msg})") from None
    passed = []
    for key, expected in preset.config_facts.items():
        value = _dotted(config, key)
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if value not in allowed:
            raise InputError(config_path, f"{key} is {value!r}, {preset.name} has {expected!r}")
        passed.append(f"config {key} = {value!r}")
    weight_files = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    if not weight_files:
        raise InputError(path, "no weight file (model.safetensors or pytorch_model.bin)")
    for weight_file in weight_files:
        if weight_file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(weight_file), framework="pt") as handle:
                    count = len(list(handle.keys()))
            except Exception as exc:
                raise InputError(weight_file, f"unreadable safetensors file ({exc})") from None
            if count == 0:
                raise InputError(weight_file, "holds no tensors")
            passed.append(f"{weight_file.name}: {count} tensors readable")
    passed.append(_load_strictly(path, preset))
    return passed


def _load_strictly(path: Path, preset: WeightPreset) -> str:
    """Load the folder with the loader the commands use: every expected tensor, with its shape.

    The folder is built into its model (SAM, SAM 2, DINOv2), refusing missing or unexpected
    tensors and wrong shapes.
    """
    if preset.family == "sam2":
        from ragsam.models.sam2 import build_sam2

        model, _ = build_sam2(str(path))
        count = len(model.state_dict())
    elif preset.family == "dinov2":
        from ragsam.models.dinov2 import load_dinov2

        model, _ = load_dinov2(str(path))
        count = len(model.state_dict())
    elif preset.arch is not None:
        from ragsam.models.build import build_sam_model

        # Built at the pretraining size with SAM's own 4 mask tokens: the strict loader refuses
        # any missing, unexpected or wrongly shaped tensor.
        model = build_sam_model(preset.arch, str(path), num_classes=3, image_size=1024)
        count = len(model.state_dict())
    else:
        return "no architecture known for this preset: tensors not checked"
    return f"all {count} tensors of the {preset.family} architecture present with their shapes"


def _verify_file(path: Path, preset: WeightPreset) -> list[str]:
    passed = []
    if preset.sha256_prefix:
        digest = sha256_of(path)
        if not digest.startswith(preset.sha256_prefix):
            raise InputError(path, f"SHA-256 {digest[:12]}... does not start with {preset.sha256_prefix} "
                                   f"as the official {preset.name} file does (corrupt or another file)")
        passed.append(f"SHA-256 starts with {preset.sha256_prefix}")
    if preset.official_key is not None:
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise InputError(path, f"not a loadable tensor checkpoint ({type(exc).__name__}); "
                                   "pickled code is refused") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        key, shape = preset.official_key
        if not isinstance(state, dict) or key not in state:
            raise InputError(path, f"has no tensor {key!r}: not an official {preset.name} checkpoint")
        if tuple(state[key].shape) != shape:
            raise InputError(path, f"{key} has shape {tuple(state[key].shape)}, {preset.name} has {shape}")
        passed.append(f"{key} has shape {shape}")
    if not passed:
        passed.append("file exists (no checksum or key facts known for this preset)")
    return passed

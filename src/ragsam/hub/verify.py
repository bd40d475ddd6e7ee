"""Check a local weights folder or official checkpoint against a named preset.

``ragsam weights verify FILE NAME``. For an official file (Meta's ``.pth`` / ``.pt``):

1. the published checksum where one exists: Meta names SAM files
   ``<name>_<first 6 hex of sha256>.pth`` (torch.hub convention), so the prefix is
   checked. Meta publishes no checksum for SAM 2 / 2.1 (``checkpoints/download_ckpts.sh``
   only lists URLs) nor for DINOv2 (``dinov2/hub/backbones.py`` loads by URL, no hash
   in the name), so none is checked there and the report says so;
2. the file opens with ``torch.load(weights_only=True)`` (memory-mapped; a truncated
   file, pickled code or a non-checkpoint is refused);
3. every tensor name and shape of the preset's architecture: the expected layout is
   derived from the transformers model through the same rename rules the converters use
   (SAM 2, DINOv2: ``official_shapes`` in official names; SAM: the file's keys renamed to
   transformers' names); a missing, unexpected or mis-shaped tensor is refused, naming the
   preset the file matches instead when one does.

For a Hugging Face folder: ``config.json`` carries the preset's facts and the folder
loads strictly into its model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ragsam.errors import InputError
from ragsam.models.presets import PRESETS, WeightPreset, get_preset


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: str | Path, name: str) -> list[str]:
    """Check a local folder or official file against preset ``name``.

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


def read_checkpoint(path: Path, mmap: bool = True) -> Any:
    """``torch.load(weights_only=True)`` with every failure as one :class:`InputError` line
    (:func:`ragsam.models.weights.read_pickled_checkpoint`, memory-mapped by default)."""
    from ragsam.models.weights import read_pickled_checkpoint

    return read_pickled_checkpoint(path, mmap=mmap)


def official_state(path: Path, family: str, obj: Any) -> dict:
    """The official-layout state dict inside a loaded checkpoint of ``family``."""
    if family == "dinov2":
        from ragsam.models.convert_dinov2 import unwrap_official

        if not isinstance(obj, dict):
            raise InputError(path, f"expected a state dict, found {type(obj).__name__}")
        return unwrap_official(obj, path)
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj:
        raise InputError(path, "not a state dict of tensors")
    return obj


def expected_shapes(preset: WeightPreset) -> dict[str, tuple[int, ...]] | None:
    """Every tensor name and shape of ``preset``'s official file (``None`` where not known).

    SAM 2 and DINOv2: in the official names. SAM: in the transformers names the file's
    keys are renamed to (:func:`ragsam.models.convert_sam.convert_meta_state_dict`), at the
    pretraining size with SAM's 4 mask tokens.
    """
    if preset.family == "sam" and preset.arch is not None:
        import torch
        from transformers import SamModel

        from ragsam.models.registry import ARCHITECTURES, sam_config

        with torch.device("meta"):
            model = SamModel(sam_config(ARCHITECTURES[preset.arch]))
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if preset.family == "dinov2" and preset.official_variant:
        from ragsam.models.convert_dinov2 import official_shapes, variant_config

        return official_shapes(variant_config(preset.official_variant))
    if preset.family == "sam2" and preset.official_variant:
        from ragsam.models.convert_sam2 import hiera_config, official_shapes

        return official_shapes(hiera_config(preset.official_variant))
    return None


def compare_shapes(path: Path, state: dict, expected: dict[str, tuple[int, ...]], preset: WeightPreset) -> str:
    """Refuse ``state`` unless it holds exactly ``expected`` (names and shapes); the passed line."""
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found == expected:
        return f"all {len(expected)} tensors of {preset.name} present with their shapes"
    other = _matching_preset(found, preset)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if wrong:
        detail = f"{wrong[0]} has shape {found[wrong[0]]}, {preset.name} has {expected[wrong[0]]}"
    elif missing:
        detail = f"{len(missing)} of its {len(expected)} tensors are missing ({_few(missing)})"
    else:
        detail = f"{len(extra)} tensors are not {preset.name} weights ({_few(extra)})"
    if other is not None:
        raise InputError(path, f"not {preset.name} but {other} ({detail})")
    if missing and not wrong and not extra:
        raise InputError(path, f"incomplete {preset.name} checkpoint: {detail}")
    raise InputError(path, f"not a {preset.name} checkpoint: {detail}")


def _few(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f", ... (+{len(keys) - shown})" if len(keys) > shown else "")


def _matching_preset(found: dict[str, tuple[int, ...]], preset: WeightPreset) -> str | None:
    """The name of another preset of the same family whose official layout ``found`` is."""
    for other in PRESETS.values():
        if other.family != preset.family or other.name == preset.name or not other.official_variant:
            continue
        if other.official_variant == preset.official_variant:
            continue
        if expected_shapes(other) == found:
            return other.name
    return None


def _verify_file(path: Path, preset: WeightPreset) -> list[str]:
    passed = []
    if preset.sha256_prefix:
        digest = sha256_of(path)
        if not digest.startswith(preset.sha256_prefix):
            raise InputError(path, f"SHA-256 {digest[:12]}... does not start with {preset.sha256_prefix} "
                                   f"as the official {preset.name} file does (corrupt or another file)")
        passed.append(f"SHA-256 starts with {preset.sha256_prefix}")
    state = official_state(path, preset.family, read_checkpoint(path))
    expected = expected_shapes(preset)
    if preset.family == "sam" and expected is not None:
        from ragsam.models.convert_sam import convert_meta_state_dict, is_meta_layout

        if not is_meta_layout(state):
            raise InputError(path, f"not an official {preset.name} checkpoint (no image_encoder.* tensors)")
        state = convert_meta_state_dict(state, str(path))  # names only: the views stay memory-mapped
    if expected is not None:
        passed.append(compare_shapes(path, state, expected, preset))
    else:
        passed.append("no architecture known for this preset: tensors not checked")
    if not preset.sha256_prefix:
        passed.append(f"no published checksum for {preset.name} (Meta publishes none for this file)")
    return passed


def _dotted(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


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

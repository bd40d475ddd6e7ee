"""``ragsam weights convert``: an official Meta checkpoint -> a Hugging Face folder.

One entry point for the three families, recognised from the tensor names:

* SAM / MedSAM ``.pth`` (``image_encoder.patch_embed.*``) -> a transformers SAM folder
  (:func:`ragsam.models.export.convert_checkpoint`);
* SAM 2 / 2.1 ``.pt`` (``{"model": {"image_encoder.trunk.*": ...}}``) -> a
  ``Sam2VideoModel`` folder (``model_type: sam2_video``);
* DINOv2 ``.pth`` (``cls_token``, ``pos_embed``, ``blocks.N.*``; ``register_tokens`` for the
  ``_reg4`` files) -> a ``Dinov2Model`` / ``Dinov2WithRegistersModel`` folder whose
  ``config.json`` records Meta's position-embedding interpolation
  (``ragsam_pos_interpolation``), so ragsam computes the same embeddings from the folder
  as from the ``.pth`` (plain transformers ignores the key and uses its own rule).

With ``variant`` the file is first verified against that preset (every tensor name and
shape, the published checksum where one exists). Every tensor is mapped explicitly and
loaded strictly before anything is written; the folder appears atomically, so a
refused file leaves nothing behind.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from ragsam.errors import InputError
from ragsam.hub.verify import read_checkpoint, verify_weights
from ragsam.utils.atomic import atomic_dir, check_writable

FAMILIES = ("sam", "sam2", "dinov2")


def detect_family(path: Path) -> str:
    """``sam``, ``sam2`` or ``dinov2`` from the tensor names of an official checkpoint.

    Raises:
        InputError: unreadable file or none of the three layouts.
    """
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a state dict, found {type(obj).__name__}")
    for wrapper in ("model", "teacher", "state_dict"):
        if isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    keys = [k.removeprefix("module.").removeprefix("backbone.") for k in obj]
    if any(k.startswith("image_encoder.trunk.") for k in keys):
        return "sam2"
    if "cls_token" in keys and "pos_embed" in keys and any(k.startswith("blocks.") for k in keys):
        return "dinov2"
    if any(k.startswith("image_encoder.") for k in keys) or (
            any(k.startswith("vision_encoder.") for k in keys) and "shared_image_embedding.positional_embedding" in keys):
        return "sam"  # Meta's layout, or a SAM state dict already in transformers' (converted as a strict copy)
    raise InputError(path, f"not an official SAM, SAM 2 or DINOv2 checkpoint (keys such as "
                           f"{', '.join(keys[:3]) or 'none'})")


def convert_weights(source: str | PathLike, out_dir: str | PathLike, variant: str | None = None,
                    force: bool = False) -> tuple[Path, str]:
    """Convert an official checkpoint to a Hugging Face folder.

    Args:
        source: Meta's ``.pth`` / ``.pt`` (SAM, MedSAM, SAM 2 / 2.1, DINOv2 with or without registers).
        out_dir: the folder to write (``config.json`` + ``model.safetensors``).
        variant: a preset name (``sam2.1-tiny``, ``dinov2-small-reg`` ...) the file must match.
        force: replace ``out_dir`` if it exists.
    Returns:
        ``(out_dir, family)``.
    Raises:
        InputError: unreadable file, unknown layout, a variant it is not, missing or extra tensors.
        OutputExistsError: ``out_dir`` exists and not ``force``.
    """
    from ragsam.models.presets import get_preset

    source = Path(source)
    if not source.is_file():
        raise InputError(source, "weights file does not exist")
    check_writable(out_dir, force)
    family = detect_family(source)
    if variant is not None:
        preset = get_preset(variant)
        if preset.family != family:
            raise InputError(source, f"a {family} checkpoint, not {variant} ({preset.family})")
        verify_weights(source, variant)
    if family == "sam":
        from ragsam.models.export import convert_checkpoint

        return convert_checkpoint(source, out_dir, force=force), family
    if family == "sam2":
        from ragsam.models.sam2 import build_sam2

        model, _ = build_sam2(str(source))
    else:
        from ragsam.models.dinov2 import load_dinov2

        model, _ = load_dinov2(source)
    with atomic_dir(out_dir, force=force) as tmp:
        model.save_pretrained(str(tmp))
    return Path(out_dir), family

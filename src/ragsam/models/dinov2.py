"""DINOv2 backbones: the named test architectures and strict loading from every source.

:func:`load_dinov2` reads

* a Hugging Face id (``facebook/dinov2-small`` 384-d, ``facebook/dinov2-base``
  768-d, ``-large`` 1024-d, ``-giant`` 1536-d) or a ``save_pretrained`` folder;
* a DINOv2 weight preset name (``dinov2-small``, see ``ragsam weights list``);
* an official Meta ``.pth`` (``dinov2_vits14_pretrain.pth`` ..., and the register
  variants ``dinov2_vits14_reg4_pretrain.pth`` ...), converted by
  :mod:`ragsam.models.convert_dinov2`;
* ``"random"``: the dinov2-small architecture, randomly initialised (seeded);
* ``"tiny"``: a 2-layer, 32-wide DINOv2 for tests and demos (seeded).

Position embeddings at other input sizes than 518 px: a ``.pth`` resamples them with
Meta's rule (bicubic with Meta's scale factor; :mod:`ragsam.models.dinov2_pos`), so
ragsam computes what Meta's ``DinoVisionTransformer`` computes; a Hugging Face folder
or id keeps transformers' rule, unless its ``config.json`` records Meta's (folders
written by ``ragsam weights convert``).

Loading is strict (:mod:`ragsam.utils.state_dict`): a missing, unexpected or
mis-shaped tensor is an :class:`~ragsam.errors.InputError`; only the image
classification head of Hub checkpoints (``classifier.*``) is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersModel

from ragsam.errors import InputError, MissingWeightsError
from ragsam.models.dinov2_pos import apply_recorded_interpolation, meta_setting, use_meta_interpolation
from ragsam.utils.native_output import quiet_transformers
from ragsam.utils.state_dict import check_loading_info, load_exactly

NAMED_DINOV2 = ("random", "tiny")
OFFICIAL_SUFFIXES = (".pth", ".pt")
DINOV2_TYPES = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}


def dinov2_small_config() -> Dinov2Config:
    """The facebook/dinov2-small architecture (ViT-S/14, 384-d, 12 layers, 6 heads, 518 px)."""
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                        patch_size=14, image_size=518, layer_norm_eps=1e-6)


def tiny_config() -> Dinov2Config:
    """A 2-layer, 32-wide DINOv2 (patch 14, 518 px grid) that runs in milliseconds on a CPU."""
    return Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                        patch_size=14, image_size=518, layer_norm_eps=1e-6)


def seeded_dinov2(config: Dinov2Config, seed: int) -> Dinov2Model:
    """A randomly initialised model that is the same on every call (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Dinov2Model(config).eval()


def load_dinov2(weights: str | os.PathLike, seed: int = 0) -> tuple[Dinov2Model | Dinov2WithRegistersModel, str]:
    """A DINOv2 backbone in eval mode (fp32, CPU) and the name it is recorded under.

    Args:
        weights: see the module docstring.
        seed: initialisation seed for ``"random"`` / ``"tiny"``.
    Returns:
        ``(model, name)``; ``name`` is the resolved absolute path for files and folders.
    Raises:
        InputError: unknown name, missing file, wrong architecture.
        MissingWeightsError: a Hugging Face id that is neither cached nor downloadable.
    """
    name = str(weights)
    path = Path(name).expanduser()
    if name == "random":
        return seeded_dinov2(dinov2_small_config(), seed), name
    if name == "tiny":
        return seeded_dinov2(tiny_config(), seed), name
    if path.suffix in OFFICIAL_SUFFIXES or path.is_file():
        if not path.is_file():
            raise InputError(path, "weights file does not exist")
        if path.suffix not in OFFICIAL_SUFFIXES:
            raise InputError(path, f"unsupported weights file suffix {path.suffix!r} (expected .pth/.pt, "
                                   "a Hugging Face folder or id, 'random' or 'tiny')")
        return _load_official(path), str(path.resolve())
    if path.is_dir():
        return _load_hf(str(path)), str(path.resolve())
    if (repo := _preset_repo(name)) is not None:
        return _load_hf(repo), name
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return _load_hf(name), name
    raise InputError(name, "no such DINOv2 weights (expected a Hugging Face id such as "
                           "facebook/dinov2-small, a folder, an official .pth, 'random' or 'tiny')")


def _load_hf(weights: str) -> Dinov2Model | Dinov2WithRegistersModel:
    """Load a transformers DINOv2 (with or without registers) strictly (missing tensors are an error)."""
    from transformers import AutoConfig

    local = Path(weights).is_dir()
    try:
        config = AutoConfig.from_pretrained(weights)
    except OSError as exc:
        if local:
            raise InputError(weights, f"not a Hugging Face model folder ({str(exc).splitlines()[0][:160]})") from None
        raise MissingWeightsError(
            f"{weights}: DINOv2 weights are not in the local Hugging Face cache and could not be "
            f"downloaded; download them once with network access or pass a local folder or .pth") from None
    if config.model_type not in DINOV2_TYPES:
        raise InputError(weights, f"model type {config.model_type!r} is not a DINOv2 (expected "
                                  f"{' or '.join(map(repr, DINOV2_TYPES))})")
    with quiet_transformers():
        model, info = DINOV2_TYPES[config.model_type].from_pretrained(weights, config=config,
                                                                      output_loading_info=True)
    check_loading_info(info, weights, "DINOv2 weights", allow_unexpected=("classifier.*",))
    apply_recorded_interpolation(model)
    return model.float().eval()


def _load_official(path: Path) -> Dinov2Model | Dinov2WithRegistersModel:
    from ragsam.models.convert_dinov2 import load_official_checkpoint, model_class

    config, state = load_official_checkpoint(path)
    model = model_class(config)(config)
    load_exactly(model, state, str(path), "the inferred DINOv2 architecture", "DINOv2 weights")
    use_meta_interpolation(model, meta_setting(getattr(config, "num_register_tokens", 0)))
    return model.float().eval()


def _preset_repo(name: str) -> str | None:
    """The Hugging Face id of a DINOv2 weight preset (``dinov2-small`` ...), if ``name`` is one."""
    from ragsam.models.presets import PRESETS

    preset = PRESETS.get(name)
    return preset.hf_repo if preset is not None and preset.family == "dinov2" else None

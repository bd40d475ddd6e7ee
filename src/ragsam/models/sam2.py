"""Build or load SAM 2 as a transformers ``Sam2VideoModel`` (the memory-conditioned tracker).

``weights`` may be

* a Hugging Face id or local folder (``Sam2VideoModel.from_pretrained``, e.g.
  ``facebook/sam2.1-hiera-tiny``; folders saved with ``save_pretrained`` too);
* an official Meta ``.pt`` checkpoint (``sam2.1_hiera_tiny.pt``; ``{"model": state_dict}``,
  read with ``torch.load(weights_only=True)`` and renamed by :mod:`ragsam.models.convert_sam2`);
* ``"random"``: the SAM 2.1 Hiera-tiny configuration, randomly initialised (seeded);
* ``"tiny"``: a much smaller SAM 2 (128 px input, five Hiera blocks, 128 channels)
  that segments a slice in milliseconds on a CPU (seeded), for tests and demos.

Loading is strict: a missing or unexpected weight is an :class:`InputError`.

For ``random`` and ``tiny`` every tensor that the transformers initialiser leaves at
exactly zero (the no-memory / no-object embeddings, the temporal encodings of the
memories, the memory-fuser layer scale, biases) is drawn from N(0, 0.1) instead, so
that tests exercise every path that real weights use (a zero temporal encoding
would hide a wrong memory slot). The object-score head's output bias is set to
``OBJECT_SCORE_BIAS`` (+2): an untrained head scores objects as absent, and SAM 2 then
replaces every mask by its -1024 "no object" placeholder and every object pointer by
the no-object pointer, which would leave nothing for tests to compare.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import Sam2VideoConfig, Sam2VideoModel

from ragsam.errors import InputError, MissingWeightsError
from ragsam.models.convert_sam2 import convert_official_state_dict, is_official_layout, official_config
from ragsam.utils.device import resolve_device
from ragsam.utils.native_output import quiet_transformers
from ragsam.utils.state_dict import check_loading_info, load_exactly

SAM2_SPECIAL = ("random", "tiny")
OBJECT_SCORE_BIAS = 2.0
TINY_TRUNK_WIDTH = 16  # no released SAM 2 has a 16-channel Hiera: identifies "tiny" in official layout


def tiny_sam2_config(image_size: int = 128, hidden: int = 128) -> Sam2VideoConfig:
    """A small SAM 2 with the structure of the real one (all modules, 4 Hiera stages).

    Args:
        image_size: input side in pixels (multiple of 64).
        hidden: channels of the FPN, decoder and memory attention (memory channels stay 64,
            so object pointers are split into ``hidden // 64`` tokens as in the real model).
    """
    if image_size % 64:
        raise InputError(None, f"tiny SAM 2 image_size must be a multiple of 64, got {image_size}")
    s = image_size
    backbone = {
        "model_type": "sam2_hiera_det_model", "hidden_size": 16, "num_attention_heads": 1, "image_size": [s, s],
        "blocks_per_stage": [1, 1, 2, 1], "embed_dim_per_stage": [16, 32, 64, 128],
        "num_attention_heads_per_stage": [1, 2, 4, 8], "window_size_per_stage": [4, 4, 4, 2],
        "global_attention_blocks": [3], "window_positional_embedding_background_size": [4, 4],
    }
    vision = {
        "model_type": "sam2_vision_model", "backbone_config": backbone, "backbone_channel_list": [128, 64, 32, 16],
        "backbone_feature_sizes": [[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]], "fpn_hidden_size": hidden,
    }
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": s, "patch_size": 16},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 256, "iou_head_hidden_dim": 64},
        image_size=s,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=2,
        memory_attention_feed_forward_hidden_size=256,
        memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=hidden,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=2 * hidden,
        memory_fuser_num_layers=1,
        # an untrained SAM 2 initialised at the default 0.02 gives masks that barely depend on
        # the image or the memories; 0.2 makes every input visibly matter in tests
        initializer_range=0.2,
    )


def _randomise_zeros(model: Sam2VideoModel, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if torch.count_nonzero(param) == 0:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))


def _random_model(config: Sam2VideoConfig, seed: int) -> Sam2VideoModel:
    torch.manual_seed(seed)
    model = Sam2VideoModel(config)
    _randomise_zeros(model, seed)
    with torch.no_grad():  # see module docstring: report objects as visible
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(OBJECT_SCORE_BIAS)
        # one random Fourier matrix in SAM 2 (pe_layer), two copies in transformers: keep them equal
        model.shared_image_embedding.positional_embedding.copy_(
            model.prompt_encoder.shared_embedding.positional_embedding)
    return model


def _read_official(path: Path) -> tuple[Sam2VideoModel, str]:
    from ragsam.models.weights import read_pickled_checkpoint

    obj = read_pickled_checkpoint(path)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(path, "not a SAM 2 checkpoint (expected {'model': state_dict} of tensors)")
    if not is_official_layout(state):
        raise InputError(path, "not an official SAM 2 checkpoint (no image_encoder.trunk.* weights)")
    patch = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is not None and int(patch.shape[0]) == TINY_TRUNK_WIDTH:
        config, name = tiny_sam2_config(), "tiny"  # our test architecture, written in the official layout
    else:
        config, name = official_config(state, str(path))
    converted = convert_official_state_dict(state, str(path))
    model = Sam2VideoModel(config)
    load_exactly(model, converted, str(path), weights_name="SAM 2 weights")
    return model, name


def _from_pretrained(weights: str, folder: Path | None) -> Sam2VideoModel:
    if folder is not None:
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise InputError(folder, "not a Hugging Face model folder (no config.json)")
        try:
            model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise InputError(config_file, f"not valid JSON ({exc})") from None
        if model_type not in ("sam2", "sam2_video"):
            raise InputError(folder, f"not a SAM 2 model folder (config.json model_type {model_type!r})")
    try:
        with quiet_transformers():
            model, loading = Sam2VideoModel.from_pretrained(weights, output_loading_info=True)
    except OSError as exc:
        if folder is not None:
            raise InputError(folder, f"cannot load SAM 2 weights ({str(exc).splitlines()[0][:200]})") from None
        raise MissingWeightsError(f"{weights}: not a local file or folder, and the Hugging Face Hub download "
                                  f"failed ({str(exc).splitlines()[0][:160]})") from None
    check_loading_info(loading, weights, "SAM 2 weights", allow_missing=("*position_ids",))
    return model


def build_sam2(weights: str, device: str | torch.device = "cpu", seed: int = 0) -> tuple[Sam2VideoModel, dict[str, Any]]:
    """Build SAM 2 from ``weights`` (see module docstring), in eval mode on ``device``.

    Returns:
        ``(model, info)``; ``info`` holds ``source``, ``kind`` (``hf``, ``official``,
        ``random``, ``tiny``), ``name``, ``image_size`` (px) and ``parameters``.
    Raises:
        InputError: unreadable / non-SAM 2 / incomplete weights, CUDA unavailable.
        MissingWeightsError: a Hub id that cannot be downloaded.
    """
    from ragsam.models.presets import PRESETS, resolve_weights

    dev = resolve_device(device)
    if weights in PRESETS and not Path(weights).exists():
        weights = resolve_weights(weights)  # e.g. sam2.1-tiny -> facebook/sam2.1-hiera-tiny
    path = Path(weights).expanduser()
    if weights in SAM2_SPECIAL and not path.exists():
        kind = weights
        config = Sam2VideoConfig() if weights == "random" else tiny_sam2_config()
        model = _random_model(config, seed)
        name = "sam2.1_hiera_tiny (random)" if weights == "random" else "tiny"
    elif path.is_file():
        if path.suffix not in (".pt", ".pth"):
            raise InputError(path, f"unknown SAM 2 weights format {path.suffix!r} (expected an official .pt, "
                                   "a Hugging Face folder or id, 'random' or 'tiny')")
        kind = "official"
        model, name = _read_official(path)
    elif path.is_dir():
        kind, name = "hf", path.name
        model = _from_pretrained(str(path), path)
    elif path.suffix in (".pt", ".pth") or weights.count("/") != 1:
        raise InputError(path, "SAM 2 weights file or folder does not exist")
    else:
        kind, name = "hf", weights
        model = _from_pretrained(weights, None)
    model = model.to(dev).eval()
    info = {"source": str(weights), "kind": kind, "name": name, "image_size": int(model.config.image_size),
            "parameters": int(sum(p.numel() for p in model.parameters()))}
    return model, info

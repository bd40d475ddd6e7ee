"""Read pretrained SAM weights from any source users have, and load them strictly.

Sources: a Hugging Face id or local folder (``config.json`` + ``*.safetensors``
or ``pytorch_model.bin``), an official Meta SAM / MedSAM ``.pth`` (a plain
state dict, converted by :mod:`ragsam.models.convert_sam`), a ``.safetensors``
file, or ``"random"``. Pickles are only ever opened with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ragsam.errors import InputError, MissingWeightsError
from ragsam.models.convert_sam import SHARED_KEY, TIED_KEY, convert_meta_state_dict, is_meta_layout
from ragsam.models.registry import identify_arch

_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_pickled_checkpoint(path: Path, mmap: bool = False) -> object:
    """The object in a PyTorch checkpoint, opened with ``torch.load(weights_only=True)`` only.

    The one rule for reading ``.pth`` / ``.pt`` files (SAM, SAM 2, DINOv2, ``weights verify``).

    Raises:
        InputError: not a zip archive or pickle, pickled code (refused, never run), a truncated
            or otherwise unreadable file; one line each.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch zip archive or legacy pickle
        raise InputError(path, "not a readable PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and head.startswith(b"PK"))
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(exc))
        reason = found.group(0) if found else str(exc).strip().splitlines()[-1][:160]
        raise InputError(path, f"refusing to unpickle: the file holds more than tensors ({reason}); "
                               "only weights_only checkpoints are loaded") from None
    except EOFError:
        raise InputError(path, "not a readable PyTorch checkpoint (the file is truncated)") from None
    except (RuntimeError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = " - truncated or corrupt?" if "zip" in first.lower() else ""
        raise InputError(path, f"not a readable PyTorch checkpoint ({first[:120]}{hint})") from None


def _load_pickle(path: Path) -> dict:
    obj = read_pickled_checkpoint(path)
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict"):  # training checkpoints nest the weights
            if isinstance(obj.get(wrapper), dict) and not any(isinstance(v, Tensor) for v in obj.values()):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(path, "not a state dict of tensors")
    return obj


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None


def _load_folder(folder: Path) -> dict[str, Tensor]:
    config = folder / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise InputError(config, f"not valid JSON ({exc})") from None
        if model_type not in (None, "sam"):
            raise InputError(folder, f"not a SAM model folder (config.json model_type {model_type!r})")
    files = sorted(folder.glob("*.safetensors"))
    if files:
        state: dict[str, Tensor] = {}
        for f in files:
            state.update(_load_safetensors(f))
        return state
    for name in ("pytorch_model.bin", "model.pth"):
        if (folder / name).is_file():
            return _load_pickle(folder / name)
    raise InputError(folder, "no weights found (expected *.safetensors or pytorch_model.bin)")


def _download(repo_id: str) -> Path:
    """Fetch a Hub repository's config and weights (safetensors, else ``pytorch_model.bin``)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "pytorch_model.bin"]))
        return folder
    except Exception as exc:  # offline, unknown repo, gated: all user-fixable
        raise MissingWeightsError(f"{repo_id}: not a local file or folder, and the Hugging Face Hub download "
                                  f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); download it "
                                  "elsewhere (`ragsam weights pull`) and pass the local folder") from None


def read_state_dict(weights: str) -> dict[str, Tensor]:
    """Weights from ``weights`` in the transformers SAM layout (pretrained resolution).

    ``weights`` may also be a preset name of :mod:`ragsam.models.presets`.

    Raises:
        InputError: missing, corrupt, unsafe or non-SAM file.
        MissingWeightsError: a Hub id that cannot be downloaded.
    """
    path = Path(weights).expanduser()
    if not path.exists():  # a preset name ("sam-vit-b", "medsam-vit-b") means its Hub id
        from ragsam.models.presets import resolve_weights

        weights = resolve_weights(weights)
    if path.is_dir():
        state = _load_folder(path)
    elif path.is_file():
        if path.suffix == ".safetensors":
            state = _load_safetensors(path)
        elif path.suffix in _PICKLE_SUFFIXES:
            state = _load_pickle(path)
        else:
            raise InputError(path, f"unknown weights format {path.suffix!r} (expected .pth, .pt, .safetensors "
                                   "or a Hugging Face folder)")
    elif path.suffix in _PICKLE_SUFFIXES + (".safetensors",) or not _HF_ID.match(weights):
        raise InputError(path, "weights file or folder does not exist")
    else:
        path = _download(weights)
        state = _load_folder(path)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if is_meta_layout(state):
        state = convert_meta_state_dict(state, str(path))
    if SHARED_KEY not in state and TIED_KEY in state:  # save_pretrained keeps one of the tied copies
        state[SHARED_KEY] = state[TIED_KEY]
    if TIED_KEY not in state and SHARED_KEY in state:
        state[TIED_KEY] = state[SHARED_KEY]
    if "vision_encoder.patch_embed.projection.weight" not in state:
        raise InputError(path, "not a SAM checkpoint (no image-encoder patch embedding among "
                               f"{len(state)} keys, e.g. {sorted(state)[:3]})")
    return state


def checkpoint_arch(state: dict[str, Tensor]) -> tuple[str | None, int, int]:
    """(registered name or None, ViT width, ViT depth) of a transformers-layout state dict."""
    width = int(state["vision_encoder.patch_embed.projection.weight"].shape[0])
    depth = len({k.split(".")[2] for k in state if k.startswith("vision_encoder.layers.")})
    return identify_arch(width, depth), width, depth

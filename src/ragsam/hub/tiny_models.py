"""The tiny foundation models shipped in the package (``ragsam/resources/tiny_models``).

A tiny SAM, a tiny SAM 2 and a tiny DINOv2-architecture slice embedder, pre-trained by
``ragsam pretrain-tiny`` (:mod:`ragsam.pretrain`) on synthetic phantoms only. They let the
demo run the paper's method offline (LoRA on a pretrained SAM, training-free retrieval
with a pretrained SAM 2) when no public weights are in the Hugging Face cache. They are
not models of CT: their numbers show that each method learns, not its accuracy.

Each folder is a plain Hugging Face folder and loads through the loaders users use
(``model.weights=<sam>``, ``build_sam2(<sam2>)``, ``build_embedder(<embedder>)``);
``manifest.json`` records the SHA-256 of every file, checked by :func:`verify_tiny_models`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragsam.errors import InputError

TINY_MODELS_DIR = Path(__file__).resolve().parents[1] / "resources" / "tiny_models"


@dataclass(frozen=True)
class TinyModels:
    """Paths of the three tiny models and what the manifest says about them.

    Attributes:
        root: the folder. sam / sam2 / embedder: the model folders.
        embedder_image_size: the embedder's input side in pixels (what it was trained at).
        slice_size: the slice side (px) the models were pre-trained on.
        manifest: the parsed ``manifest.json``.
    """

    root: Path
    sam: Path
    sam2: Path
    embedder: Path
    embedder_image_size: int
    slice_size: int
    manifest: dict[str, Any]


def verify_tiny_models(root: str | os.PathLike = TINY_MODELS_DIR) -> dict[str, Any]:
    """Check every file listed in ``root/manifest.json`` against its SHA-256; returns the manifest.

    Raises:
        InputError: no manifest, a missing file, an extra file, or a checksum mismatch.
    """
    folder = Path(root)
    path = folder / "manifest.json"
    if not path.is_file():
        raise InputError(folder, "no tiny models here (manifest.json missing); run `ragsam pretrain-tiny`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"not a tiny-models manifest ({exc})") from None
    for rel, digest in sorted(files.items()):
        file = folder / rel
        if not file.is_file():
            raise InputError(file, "listed in manifest.json but missing")
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise InputError(file, "SHA-256 differs from manifest.json (corrupt or replaced)")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if p.is_file() and p.name != "manifest.json" and "__pycache__" not in p.parts}
    extra = sorted(present - set(files))
    if extra:
        raise InputError(folder / extra[0], "not listed in manifest.json")
    return manifest


def tiny_models(root: str | os.PathLike = TINY_MODELS_DIR, verify: bool = True) -> TinyModels:
    """The tiny models in ``root`` (default: the shipped ones), checksums verified unless ``verify=False``."""
    folder = Path(root)
    manifest = verify_tiny_models(folder) if verify else json.loads((folder / "manifest.json").read_text("utf-8"))
    settings = manifest.get("settings", {})
    return TinyModels(folder, folder / "sam", folder / "sam2", folder / "embedder",
                      int(settings.get("embedder_image_size", 56)), int(settings.get("size", 64)), manifest)

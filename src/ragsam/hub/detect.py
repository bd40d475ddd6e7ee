"""The weights to use when none are named: public ones already in the Hugging Face cache, else ragsam's
shipped tiny models (:mod:`ragsam.hub.tiny_models`). Offline: nothing is downloaded.

Used by ``ragsam demo`` (every stage) and the app (``--sam2-weights auto``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class WeightsUsed:
    """Which weights each stage of the demo used.

    Attributes:
        sam_arch / sam_weights / sam_label: the fine-tuned model (``model.arch``,
            ``model.weights``, a readable name).
        sam2_weights / sam2_label: SAM 2 for retrieval-augmented segmentation.
        embedder_weights / embedder_label: the slice embedder of the support bank.
        pretrained: ``{"sam", "sam2", "embedder"} -> bool``, true for public pretrained weights;
            false for ragsam's tiny models pre-trained on synthetic phantoms.
        embedder_image_size: the embedder's input side in pixels.
    """

    sam_arch: str
    sam_weights: str
    sam_label: str
    sam2_weights: str
    sam2_label: str
    embedder_weights: str
    embedder_label: str
    pretrained: dict[str, bool] = field(default_factory=dict)
    embedder_image_size: int = 224

    @property
    def all_pretrained(self) -> bool:
        return bool(self.pretrained) and all(self.pretrained.values())


def cached_hf_folder(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The local snapshot of a Hugging Face repository if it is in the cache, else ``None``.

    Never touches the network (``local_files_only``), so the demo stays offline.
    ``cache_dir`` defaults to the Hugging Face cache (``HF_HUB_CACHE``).
    """
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached, partially cached, or no huggingface_hub: all mean "not available"
        return None


def detect_weights(cache_dir: str | os.PathLike | None = None,
                   tiny_root: str | os.PathLike | None = None) -> WeightsUsed:
    """Public weights already in the Hugging Face cache; ragsam's shipped tiny models otherwise.

    The tiny models (:mod:`ragsam.hub.tiny_models`, pre-trained by ``ragsam pretrain-tiny`` on
    synthetic phantoms) are checked against their manifest before use. ``tiny_root`` replaces
    the shipped folder (tests).
    """
    from ragsam.hub.tiny_models import TINY_MODELS_DIR, tiny_models
    from ragsam.models.presets import get_preset

    found = {name: cached_hf_folder(get_preset(name).hf_repo or "", cache_dir)
             for name in ("sam-vit-b", "sam2.1-tiny", "dinov2-small")}
    sam, sam2, dino = found["sam-vit-b"], found["sam2.1-tiny"], found["dinov2-small"]
    tiny = None if sam and sam2 and dino else tiny_models(tiny_root or TINY_MODELS_DIR)
    synthetic = "pre-trained by ragsam on synthetic phantoms (resources/tiny_models)"
    return WeightsUsed(
        sam_arch="sam_vit_b" if sam else "tiny",
        sam_weights=str(sam) if sam else str(tiny.sam),
        sam_label="SAM ViT-B (facebook/sam-vit-base), LoRA rank 4" if sam
        else f"tiny SAM {synthetic}, LoRA rank 4",
        sam2_weights=str(sam2) if sam2 else str(tiny.sam2),
        sam2_label="SAM 2.1 Hiera-T (facebook/sam2.1-hiera-tiny)" if sam2 else f"tiny SAM 2 {synthetic}",
        embedder_weights=str(dino) if dino else str(tiny.embedder),
        embedder_label="DINOv2 ViT-S/14 (facebook/dinov2-small)" if dino
        else f"tiny DINOv2-architecture slice embedder {synthetic}",
        pretrained={"sam": sam is not None, "sam2": sam2 is not None, "embedder": dino is not None},
        embedder_image_size=224 if dino else tiny.embedder_image_size,
    )

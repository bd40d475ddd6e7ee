"""DINOv2 slice embedder: CT slices in [0, 1] -> L2-normalised global descriptors.

The retrieval step of RAG-SAM embeds every labelled slice with DINOv2 and
finds the nearest ones for a query slice by cosine similarity (Faiss inner
product on unit vectors). One :class:`SliceEmbedder` is used for both sides;
its :attr:`SliceEmbedder.identity` is saved with the bank so a query made with
other weights, pooling or resolution is refused instead of silently returning
meaningless neighbours.

Weights (``build_embedder(weights=...)``, read by :func:`ragsam.models.dinov2.load_dinov2`):

* a Hugging Face id (``facebook/dinov2-small`` 384-d, ``facebook/dinov2-base``
  768-d, ``-large`` 1024-d, ``-giant`` 1536-d) or a ``save_pretrained`` folder;
* an official Meta ``.pth`` (``dinov2_vits14_pretrain.pth`` ..., register variants
  ``dinov2_vits14_reg4_pretrain.pth`` ...), converted by :mod:`ragsam.models.convert_dinov2`
  and run with Meta's position-embedding interpolation (:mod:`ragsam.models.dinov2_pos`;
  Hugging Face folders keep transformers' interpolation);
* ``"random"``: the dinov2-small architecture, randomly initialised (seeded);
* ``"tiny"``: a 2-layer, 32-wide DINOv2 for tests and demos (seeded).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Dinov2Model

from ragsam.errors import InputError
from ragsam.models.dinov2 import NAMED_DINOV2, load_dinov2
from ragsam.models.dinov2_pos import interpolation_label
from ragsam.utils import ranks
from ragsam.utils.device import resolve_device
from ragsam.utils.precision import autocast

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLINGS = ("cls", "mean")


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor of ``model`` (names, shapes and float32 values), hex."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        digest.update(f"{name}:{tuple(data.shape)};".encode())
        digest.update(data.tobytes())
    return digest.hexdigest()


class SliceEmbedder:
    """Embeds batches of slices with a DINOv2 backbone.

    Args:
        model: a transformers ``Dinov2Model`` or ``Dinov2WithRegistersModel``.
        weights: how the weights were named by the user (kept in the identity for messages).
        pooling: ``"cls"`` (CLS token of the final layer-normed hidden state, Meta's
            ``x_norm_clstoken``) or ``"mean"`` (mean of the patch tokens of the same state,
            Meta's ``x_norm_patchtokens``; register tokens are not patches and are left out).
        image_size: side in pixels the slices are resized to; a multiple of the patch size.
        device: torch device; default CUDA when available.
        batch_size: slices per forward pass in :meth:`embed`.
        seed: the initialisation seed of a randomly initialised model (recorded in the identity).
    """

    def __init__(self, model: Dinov2Model, weights: str, pooling: str = "cls", image_size: int = 224,
                 device: str | torch.device | None = None, batch_size: int = 32, seed: int | None = None) -> None:
        if pooling not in POOLINGS:
            raise InputError(None, f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        patch = int(model.config.patch_size)
        if image_size <= 0 or image_size % patch:
            raise InputError(None, f"image size {image_size} is not a positive multiple of the patch size {patch}")
        self.device = resolve_device(device, ranks.local_gpu())  # torchrun: one GPU per local rank
        self.model = model.eval().to(self.device)
        self.weights = weights
        self.pooling = pooling
        self.image_size = int(image_size)
        self.batch_size = max(1, int(batch_size))
        self.seed = seed  # only for randomly initialised embedders, so the bank can rebuild them
        self.registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
        self._sha256: str | None = None

    @property
    def dim(self) -> int:
        """Embedding dimension D (the hidden size: 384 for ViT-S, 768 for ViT-B)."""
        return int(self.model.config.hidden_size)

    @property
    def identity(self) -> dict:
        """What makes two embedders interchangeable; saved as the bank's ``embedder.json``."""
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.model)
        return {"architecture": "dinov2", "weights": self.weights, "weights_sha256": self._sha256,
                "pooling": self.pooling, "image_size": self.image_size, "dim": self.dim,
                "normalisation": "imagenet", "pos_interpolation": interpolation_label(self.model),
                **({"seed": self.seed} if self.seed is not None else {})}

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Check, resize and ImageNet-normalise slices.

        Args:
            images: float ``(B, 3, S, S)``, ``(B, 1, S, S)`` or ``(B, S, S)`` in [0, 1]
                (one channel is repeated to three).
        Returns:
            float32 ``(B, 3, image_size, image_size)`` on :attr:`device`.
        """
        x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InputError(None, f"images must have shape (B, 3, S, S), (B, 1, S, S) or (B, S, S); got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        if x.numel() and not torch.isfinite(x).all():
            raise InputError(None, "images contain NaN or infinite values")
        if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise InputError(None, f"images must be scaled to [0, 1] (got values {float(x.min()):.4g} .. "
                                   f"{float(x.max()):.4g}); window the CT first")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            shrink = x.shape[-1] > self.image_size or x.shape[-2] > self.image_size
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=shrink)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def embed(self, images: torch.Tensor | np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Embed slices.

        Args:
            images: see :meth:`preprocess` (values in [0, 1]).
            batch_size: slices per forward pass (default the embedder's).
        Returns:
            float32 ``(B, D)``, every row of unit L2 norm (cosine = inner product).
        """
        n = len(images)
        out = np.zeros((n, self.dim), dtype=np.float32)
        step = batch_size or self.batch_size
        for start in range(0, n, step):
            x = self.preprocess(images[start:start + step])
            with autocast(self.device):  # bf16 on CUDA GPUs that support it, fp32 elsewhere
                hidden = self.model(pixel_values=x).last_hidden_state
            vec = hidden[:, 0] if self.pooling == "cls" else hidden[:, 1 + self.registers:].mean(dim=1)
            out[start:start + len(x)] = F.normalize(vec.float(), dim=-1).cpu().numpy()
        return out


def build_embedder(weights: str | os.PathLike = "facebook/dinov2-small", pooling: str = "cls",
                   image_size: int = 224, device: str | torch.device | None = None,
                   batch_size: int = 32, seed: int = 0) -> SliceEmbedder:
    """Build a :class:`SliceEmbedder`.

    Args:
        weights: Hugging Face id or folder, a DINOv2 preset name (``dinov2-small``, see
            ``ragsam weights list``), an official ``.pth``, ``"random"`` or ``"tiny"``.
        pooling: ``"cls"`` or ``"mean"``.
        image_size: input side in pixels (multiple of the patch size 14; 224 = 16 x 16 patches).
        device: torch device (default CUDA if available).
        batch_size: slices per forward pass.
        seed: initialisation seed for ``"random"`` / ``"tiny"``.
    Raises:
        InputError: unknown name, missing file, wrong architecture, bad pooling/size.
        MissingWeightsError: a Hugging Face id that is neither cached nor downloadable.

    Example:
        >>> emb = build_embedder("tiny", image_size=56)
        >>> emb.embed(np.zeros((2, 3, 64, 64), np.float32)).shape
        (2, 32)
    """
    model, name = load_dinov2(weights, seed)
    return SliceEmbedder(model, name, pooling=pooling, image_size=image_size, device=device,
                         batch_size=batch_size, seed=seed if name in NAMED_DINOV2 else None)


def identity_mismatch(expected: dict, actual: dict) -> str | None:
    """How two embedder identities differ, or ``None`` when they are interchangeable.

    The ``weights`` label is not compared (the same tensors may be named by a
    path or an id); the tensor hash, pooling, input size, dimension,
    normalisation and position-embedding interpolation are (identities written
    before the interpolation was recorded used transformers').
    """
    keys = ("weights_sha256", "pooling", "image_size", "dim", "normalisation", "architecture",
            "pos_interpolation")
    defaults = {"pos_interpolation": "transformers"}
    expected = {**defaults, **expected}
    actual = {**defaults, **actual}
    diffs = [f"{k} {expected.get(k)!r} vs {actual.get(k)!r}" for k in keys if expected.get(k) != actual.get(k)]
    if not diffs:
        return None
    return (f"bank embedder {expected.get('weights')!r} differs from query embedder "
            f"{actual.get('weights')!r}: " + "; ".join(d if not d.startswith("weights_sha256") else
                                                       "weights_sha256 " + _short(expected, actual) for d in diffs))


def _short(expected: dict, actual: dict) -> str:
    return f"{str(expected.get('weights_sha256'))[:12]} vs {str(actual.get('weights_sha256'))[:12]}"

"""Pre-train the tiny slice embedder (the tiny DINOv2 architecture) on the corpus.

Objective (label-supervised, so that cosine nearest neighbours are slices at similar
anatomy): from the CLS token that :class:`~ragsam.retrieval.embedder.SliceEmbedder`
returns, one linear head predicts which of the 13 organs the slice shows (binary
cross-entropy), the square root of each organ's area fraction and the slice's relative
height (mean squared errors). The head is dropped afterwards; the backbone is saved with
``save_pretrained`` and loads through ``build_embedder(<folder>)``, strictly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ragsam.pretrain.corpus_slices import NUM_ORGANS, CorpusSlices, neighbour_quality
from ragsam.pretrain.settings import PretrainSettings
from ragsam.utils.threads import apply_threads


def _embed_all(embedder, corpus: CorpusSlices) -> np.ndarray:
    return embedder.embed(corpus.images, batch_size=256)


def pretrain_embedder(settings: PretrainSettings, corpus: CorpusSlices, out_dir: Path) -> dict[str, float]:
    """Train the tiny DINOv2 on ``corpus`` and save it (``config.json`` + ``model.safetensors``) in ``out_dir``.

    Returns:
        Nearest-neighbour quality (:func:`neighbour_quality`) before and after training and
        the first / last loss.
    """
    from ragsam.retrieval.embedder import build_embedder

    embedder = build_embedder("tiny", image_size=settings.embedder_image_size, device="cpu",
                              seed=settings.seed)
    apply_threads(embedder.model)  # the thread rule (one thread for a tiny model unless overridden)
    before = neighbour_quality(_embed_all(embedder, corpus), corpus)
    model = embedder.model
    torch.manual_seed(settings.seed)  # the stage does not depend on what ran before it
    gen = torch.Generator().manual_seed(settings.seed)
    head = torch.nn.Linear(model.config.hidden_size, 2 * NUM_ORGANS + 1)
    with torch.no_grad():
        head.weight.copy_(0.02 * torch.randn(head.weight.shape, generator=gen))
        head.bias.zero_()
    params = [*model.parameters(), *head.parameters()]
    optim = torch.optim.AdamW(params, lr=settings.embedder_lr, weight_decay=0.01)
    presence = torch.from_numpy(corpus.presence.astype(np.float32))
    areas = torch.from_numpy(np.sqrt(corpus.areas))
    rel_z = torch.from_numpy(corpus.rel_z)
    model.train()
    losses = []
    for step in range(settings.embedder_iterations):
        for group in optim.param_groups:  # linear warm-up over 5 %, then cosine decay
            warm = max(1, settings.embedder_iterations // 20)
            frac = step / max(1, settings.embedder_iterations - 1)
            group["lr"] = settings.embedder_lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * frac))
        idx = torch.randint(0, len(corpus.images), (settings.embedder_batch,), generator=gen)
        x = embedder.preprocess(torch.from_numpy(corpus.images[idx.numpy()]))
        cls = model(pixel_values=x).last_hidden_state[:, 0]
        out = head(F.normalize(cls, dim=-1) * np.sqrt(cls.shape[-1]))  # the direction is what retrieval uses
        loss = (F.binary_cross_entropy_with_logits(out[:, :NUM_ORGANS], presence[idx])
                + 4.0 * F.mse_loss(out[:, NUM_ORGANS:2 * NUM_ORGANS], areas[idx])
                + 4.0 * F.mse_loss(out[:, -1], rel_z[idx]))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    model.eval()
    after = neighbour_quality(_embed_all(embedder, corpus), corpus)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    return {"first_loss": round(losses[0], 4), "last_loss": round(float(np.mean(losses[-10:])), 4),
            **{f"before_{k}": v for k, v in before.items()}, **{f"after_{k}": v for k, v in after.items()}}

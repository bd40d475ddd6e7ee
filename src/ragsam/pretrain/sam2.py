"""Pre-train the tiny SAM 2 for retrieval: episodes of a corpus slice and its retrieved supports.

An episode is what ``ragsam segment`` does for one query slice: the query's ``k``
supports are retrieved from the corpus's support bank (the pre-trained embedder, the
same relative-z prior, the query's own case excluded), put in frame order with the best
neighbour nearest the query, encoded as conditioning frames, and the query is segmented
prompt-free by :class:`~ragsam.retrieval.sam2_memory.Sam2MemorySegmenter` (its
``differentiable`` mode: the same forward, with autograd). Loss per organ offered by the
supports: 0.8 soft Dice + 0.2 pixel binary cross-entropy on the per-organ logits (the
paper's weights) plus binary cross-entropy on SAM 2's object score ("the organ is on the
query slice"), which gates the mask and cannot learn from the mask loss alone.

Every weight trains, from a random initialisation of the tiny SAM 2 structure at the
corpus' slice size with memory attention set up to read its memory
(:func:`init_memory_reading`), which ``ragsam train-rag`` does not do: it fine-tunes an
existing SAM 2 (its object-score loss, ``optim.object_score_weight``, is this loop's BCE).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ragsam.pretrain.corpus_slices import CorpusSlices
from ragsam.pretrain.settings import PretrainSettings
from ragsam.utils.threads import apply_threads

OBJECT_SCORE_BIAS = 2.0  # start with every organ "visible", so masks get gradients from step one
POSITIONAL_QK_BIAS = 60.0  # |shared query/key bias| of memory cross-attention (init_memory_reading)
MEMORY_VALUE_STD = 0.2  # std of memory cross-attention's value and output weights at initialisation


def retrieve_supports(bank_dir: Path, corpus: CorpusSlices, k: int, z_prior: float) -> np.ndarray:
    """Row indexes ``(N, k)`` into ``corpus`` of each slice's supports, best first, own case excluded."""
    from ragsam.retrieval.bank import SupportBank

    bank = SupportBank.load(bank_dir)
    embedder = bank.embedder(device="cpu")
    row_of = {(c, int(z)): i for i, (c, z) in enumerate(zip(corpus.case_ids, corpus.z, strict=True))}
    out = np.zeros((len(corpus.images), k), dtype=np.int64)
    for case_id in dict.fromkeys(corpus.case_ids.tolist()):
        rows = np.flatnonzero(corpus.case_ids == case_id)
        vectors = embedder.embed(corpus.images[rows], batch_size=256)
        hits = bank.query(vectors, k, embedder.identity, exclude_cases=[case_id], z_prior=z_prior,
                          query_rel_z=corpus.rel_z[rows])
        for row, neighbours in zip(rows, hits, strict=True):
            out[row] = [row_of[(nb.case_id, nb.z)] for nb in neighbours]
    return out


def new_tiny_sam2(image_size: int, seed: int):
    """A randomly initialised tiny SAM 2 (``tiny_sam2_config``) for training from scratch.

    Initialiser scale 0.02 (the transformers default; the ``tiny`` test model's 0.2 is for
    visibly input-dependent outputs, not for training); object-score bias +2; memory
    attention's cross-attention initialised to read its memory (:func:`init_memory_reading`).
    """
    from transformers import Sam2VideoModel

    from ragsam.models.sam2 import tiny_sam2_config

    config = tiny_sam2_config(image_size=image_size)
    config.initializer_range = 0.02
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2VideoModel(config)
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(OBJECT_SCORE_BIAS)
        model.shared_image_embedding.positional_embedding.copy_(
            model.prompt_encoder.shared_embedding.positional_embedding)
    init_memory_reading(model, seed)
    return model


def init_memory_reading(model, seed: int) -> None:
    """Start memory attention's cross-attention as "look at the same place in each support".

    At the default initialisation the cross-attention is exactly uniform (its entropy is
    ln N over the N memory tokens) and its value / output projections shrink the memory's
    contribution to ~0.4 % of the conditioned features; training then segments from the
    decoder's high-resolution image skips and never learns to read the memory (measured:
    the same mask for every organ of a slice; docs/demo.md). Here, in every layer:

    * ``q_proj.bias = k_proj.bias = POSITIONAL_QK_BIAS * u`` (``u`` a random unit vector):
      queries and keys share a large constant part, so with RoPE the attention logit
      peaks where the query and memory positions coincide (entropy ~1 instead of ln 36);
    * ``v_proj`` / ``o_proj`` weights drawn with std ``MEMORY_VALUE_STD`` instead of 0.02,
      so what is read reaches the decoder (~20 % of the conditioned features).

    Everything still trains; only the starting point changes.
    """
    gen = torch.Generator().manual_seed(seed + 11)
    with torch.no_grad():
        for layer in model.memory_attention.layers:
            attn = layer.cross_attn_image
            u = torch.randn(attn.q_proj.out_features, generator=gen)
            u = POSITIONAL_QK_BIAS * u / u.norm()
            attn.q_proj.bias.copy_(u)
            attn.k_proj.bias.copy_(u)
            for proj in (attn.v_proj, attn.o_proj):
                proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) * MEMORY_VALUE_STD)


def episode_loss(seg, corpus: CorpusSlices, query: int, supports: np.ndarray) -> torch.Tensor | None:
    """The loss of one episode (see module docstring), or ``None`` when no support shows an organ."""
    images = torch.from_numpy(corpus.images[[query, *supports[::-1]]])  # best support nearest the query
    frames = seg.encode_images(images)
    memories = [seg.encode_support(f, lab) for f, lab in
                zip(frames[1:], corpus.labels[supports[::-1]], strict=True)]
    if not any(m.organs for m in memories):
        return None
    size = corpus.images.shape[-1]
    pred = seg.segment(frames[0], memories, output_size=(size, size))
    label = torch.from_numpy(corpus.labels[query].astype(np.int64))
    target = torch.stack([(label == o).float() for o in pred.organ_ids])
    logits = pred.logits.float().clamp(min=-50.0)  # an absent organ's -1024 placeholder would swamp the CE
    probs = torch.sigmoid(logits)
    dice = 1.0 - (2.0 * (probs * target).sum((1, 2)) + 1.0) / (probs.sum((1, 2)) + target.sum((1, 2)) + 1.0)
    pixel_ce = F.binary_cross_entropy_with_logits(logits, target)
    present = (target.flatten(1).amax(1) > 0).float()
    object_ce = F.binary_cross_entropy_with_logits(pred.object_scores.float(), present)
    return 0.8 * dice.mean() + 0.2 * pixel_ce + 0.2 * object_ce


def pretrain_sam2(settings: PretrainSettings, corpus: CorpusSlices, bank_dir: Path, out_dir: Path,
                  z_prior: float = 0.5) -> dict[str, float]:
    """Train the tiny SAM 2 on corpus episodes and save it (``save_pretrained``) in ``out_dir``.

    Returns:
        first / last loss (mean of the first and last 10 % of episodes) and the episode count.
    """
    from ragsam.retrieval.sam2_memory import Sam2MemorySegmenter

    supports = retrieve_supports(bank_dir, corpus, settings.k, z_prior)
    # eval mode while training, as ragsam.training.rag_model: no dropout, the episodes train
    # exactly what `ragsam segment` runs
    model = new_tiny_sam2(settings.sam2_image_size, settings.seed).eval()
    apply_threads(model)  # the thread rule (one thread for a tiny model unless overridden)
    seg = Sam2MemorySegmenter(model)
    seg.differentiable = True
    optim = torch.optim.AdamW(model.parameters(), lr=settings.sam2_lr, weight_decay=0.01)
    rng = np.random.default_rng(settings.seed)
    candidates = np.flatnonzero(corpus.presence.any(axis=1))  # queries showing at least one organ
    n = settings.sam2_iterations
    warm = max(1, n // 20)
    losses: list[float] = []
    for step in range(n):
        for group in optim.param_groups:  # warm-up, then cosine decay
            group["lr"] = settings.sam2_lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * step / n))
        query = int(rng.choice(candidates))
        loss = episode_loss(seg, corpus, query, supports[query])
        if loss is None:
            continue
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        losses.append(float(loss.detach()))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tenth = max(1, len(losses) // 10)
    return {"episodes": len(losses), "first_loss": round(float(np.mean(losses[:tenth])), 4) if losses else 0.0,
            "last_loss": round(float(np.mean(losses[-tenth:])), 4) if losses else 0.0}

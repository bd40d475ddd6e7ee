"""``PretrainSettings``: what ``ragsam pretrain-tiny`` trains, and its two presets.

``shipped`` is the setting that produced the weights in ``ragsam/resources/tiny_models``
(a fixed seed, one torch thread); ``micro`` runs every stage of
the same code on a handful of small cases in seconds (the test suite uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ragsam.errors import InputError


@dataclass(frozen=True)
class PretrainSettings:
    """How the three tiny foundation models are pre-trained.

    Attributes:
        corpus_cases: phantoms in the synthetic corpus (:mod:`ragsam.data.phantom_corpus`).
        corpus_seed: the corpus seed (disjoint from every demo phantom seed).
        size: slice side in pixels (the demo's 64 px).
        sam_iterations / sam_batch / sam_lr: prompt-free multi-organ training of the tiny SAM
            from random initialisation (``ragsam train``'s loop, every weight trainable).
        embedder_iterations / embedder_batch / embedder_lr: the slice embedder's objective
            (organ content, organ areas and relative height of a slice from its CLS token).
        embedder_image_size: the embedder's input side in pixels (multiple of its 14 px patch).
        sam2_iterations / sam2_lr: episodic retrieval training of the tiny SAM 2 from random
            initialisation (one episode per step). sam2_image_size: its input side (multiple of 64).
        k: supports per episode.
        seed: seeds initialisation, data order and episode sampling.
    """

    corpus_cases: int = 40
    corpus_seed: int = 0
    size: int = 64
    sam_iterations: int = 800
    sam_batch: int = 8
    sam_lr: float = 0.01
    embedder_iterations: int = 400
    embedder_batch: int = 64
    embedder_lr: float = 0.002
    embedder_image_size: int = 56
    sam2_iterations: int = 800
    sam2_lr: float = 0.001
    sam2_image_size: int = 64
    k: int = 2
    seed: int = 0


PRESETS: dict[str, PretrainSettings] = {
    "shipped": PretrainSettings(),
    "micro": PretrainSettings(corpus_cases=3, sam_iterations=4, sam_batch=2, embedder_iterations=4,
                              embedder_batch=8, sam2_iterations=2),
}


def get_settings(name: str, **overrides: int | float) -> PretrainSettings:
    """The preset ``name`` with ``overrides`` (field -> value) applied."""
    if name not in PRESETS:
        raise InputError(None, f"unknown pre-training preset {name!r} (choose {', '.join(PRESETS)})")
    settings = replace(PRESETS[name], **overrides) if overrides else PRESETS[name]
    if settings.size % 16 or settings.sam2_image_size % 64 or settings.embedder_image_size % 14:
        raise InputError(None, "size must be a multiple of 16, sam2_image_size of 64, embedder_image_size of 14")
    if min(settings.corpus_cases - 1, settings.k) < 1:
        raise InputError(None, "the corpus needs at least 2 cases and k >= 1 (supports come from other cases)")
    return settings

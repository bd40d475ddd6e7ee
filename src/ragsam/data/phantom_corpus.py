"""The synthetic pre-training corpus: phantoms that vary where the demo's do not.

The tiny foundation models that ship with ragsam (:mod:`ragsam.hub.tiny_models`) are
pre-trained on this corpus, never on the demo's cases. Each corpus case draws its own

* grid: ``z`` in 16..40 slices, in-plane 64..128 voxels, spacing 3..8 mm (z) and 2.5..6 mm;
* anatomy: organ sizes x0.8..1.2, organ position jitter 0.02..0.06 half fields of view,
  patient size x0.9..1.08 (see :class:`~ragsam.data.phantom.PhantomStyle`);
* intensities: HU offset N(0, 15), contrast against soft tissue x0.7..1.3, noise 4..14 HU.

Seeds are disjoint from the demo's: demo case ``i`` of ``ragsam demo --seed s`` uses seed
``s * 100_003 + i`` (:func:`~ragsam.data.phantom.write_phantom_dataset`), corpus case ``i``
of corpus seed ``c`` uses ``CORPUS_SEED_BASE + c * 100_003 + i``, with
``CORPUS_SEED_BASE = 7e12``: the two meet only for demo seeds beyond 7e7.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ragsam.data.phantom import PhantomStyle, write_phantom_case
from ragsam.errors import InputError
from ragsam.utils.atomic import atomic_dir, write_json

CORPUS_SEED_BASE = 7_000_000_000_000


@dataclass(frozen=True)
class CorpusCase:
    """One corpus phantom: its id, seed, grid and style (everything :func:`write_phantom_case` needs)."""

    case_id: str
    seed: int
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    noise_hu: float
    style: PhantomStyle


def corpus_cases(n_cases: int, seed: int = 0) -> list[CorpusCase]:
    """The ``n_cases`` cases of corpus ``seed`` (pure: the same arguments give the same list).

    Case ids are ``0001``... (the BTCV layout of the written corpus).
    """
    if n_cases < 1:
        raise InputError(None, f"the corpus needs at least one case, got n_cases={n_cases}")
    cases = []
    for i in range(n_cases):
        case_seed = CORPUS_SEED_BASE + seed * 100_003 + i
        rng = np.random.default_rng([case_seed, 1])  # a stream apart from the phantom's own
        side = int(rng.choice([64, 80, 96, 112, 128]))
        style = PhantomStyle(
            organ_scale=float(rng.uniform(0.8, 1.2)),
            position_jitter=float(rng.uniform(0.02, 0.06)),
            hu_offset=float(rng.normal(0.0, 15.0)),
            contrast=float(rng.uniform(0.7, 1.3)),
            body_scale=float(rng.uniform(0.9, 1.08)),
        )
        cases.append(CorpusCase(
            case_id=f"{i + 1:04d}", seed=case_seed,
            shape=(int(rng.integers(16, 41)), side, side),
            spacing_mm=(float(rng.uniform(3.0, 8.0)),) + (float(rng.uniform(2.5, 6.0)),) * 2,
            noise_hu=float(rng.uniform(4.0, 14.0)), style=style))
    return cases


def write_phantom_corpus(out_dir: str | os.PathLike, n_cases: int, seed: int = 0, force: bool = False) -> Path:
    """Write the corpus as a BTCV-layout dataset (``img/``, ``label/``) plus ``corpus.json``.

    ``corpus.json`` lists every case's seed, grid and style. The folder is built next to
    ``out_dir`` and moved into place when complete.

    Returns:
        ``out_dir``.
    Raises:
        OutputExistsError: ``out_dir`` exists and ``force`` is false.
        InputError: ``n_cases < 1``.
    """
    cases = corpus_cases(n_cases, seed)
    out = Path(out_dir)
    with atomic_dir(out, force=force) as tmp:
        for case in cases:
            write_phantom_case(tmp, case.case_id, case.shape, case.spacing_mm, case.seed, layout="btcv",
                               noise_hu=case.noise_hu, style=case.style)
        write_json(tmp / "corpus.json", {"format": "ragsam-phantom-corpus", "version": 1, "seed": seed,
                                         "seed_base": CORPUS_SEED_BASE,
                                         "cases": [asdict(c) for c in cases]})
    return out

"""The pre-training corpus: deterministic, varied, and disjoint from the demo's phantoms."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ragsam.data.phantom import PhantomStyle, make_phantom
from ragsam.data.phantom_corpus import CORPUS_SEED_BASE, corpus_cases, write_phantom_corpus
from ragsam.errors import InputError


def test_default_style_leaves_the_demo_phantoms_bit_identical() -> None:
    # hashes of make_phantom((8, 32, 32), (5, 4, 4), seed=3) computed on main before PhantomStyle existed
    image, labels = make_phantom((8, 32, 32), (5.0, 4.0, 4.0), seed=3)
    assert hashlib.sha256(image.array.tobytes()).hexdigest() == (
        "5a6f1e1d570b627f2ebfa963b9c7461f230d65d8f974dff1b53dd40ef6849101")
    assert hashlib.sha256(labels.array.tobytes()).hexdigest() == (
        "3035e8d99b2307a58f361761c22947e24dd008e7c725f0bb78f3a1d8dc5d106f")
    again, _ = make_phantom((8, 32, 32), (5.0, 4.0, 4.0), seed=3, style=PhantomStyle())
    assert np.array_equal(image.array, again.array)


def test_style_changes_sizes_and_intensities() -> None:
    base_img, base_lab = make_phantom((12, 64, 64), seed=1, noise_hu=0.0)
    big_img, big_lab = make_phantom((12, 64, 64), seed=1, noise_hu=0.0, style=PhantomStyle(organ_scale=1.2))
    liver = 6
    assert (big_lab.array == liver).sum() > 1.2 * (base_lab.array == liver).sum()
    bright, bright_lab = make_phantom((12, 64, 64), seed=1, noise_hu=0.0, style=PhantomStyle(hu_offset=30.0))
    assert np.array_equal(bright_lab.array, base_lab.array)  # the offset moves HU only
    inside = base_lab.array == liver
    assert np.allclose(bright.array[inside].astype(float) - base_img.array[inside], 30.0, atol=1.0)


def test_corpus_is_deterministic_varied_and_apart_from_demo_seeds() -> None:
    cases = corpus_cases(40, seed=0)
    assert cases == corpus_cases(40, seed=0)
    assert [c.case_id for c in cases[:2]] == ["0001", "0002"]
    demo_seeds = {s * 100_003 + i for s in range(10_000) for i in range(50)}
    assert not demo_seeds & {c.seed for c in cases}
    assert min(c.seed for c in cases) >= CORPUS_SEED_BASE
    assert len({c.shape for c in cases}) > 10 and len({c.shape[1] for c in cases}) == 5
    scales = [c.style.organ_scale for c in cases]
    assert 0.8 <= min(scales) < 0.9 and 1.1 < max(scales) <= 1.2
    assert corpus_cases(3, seed=1)[0].seed == CORPUS_SEED_BASE + 100_003
    with pytest.raises(InputError, match="at least one case"):
        corpus_cases(0)


def test_written_corpus_lists_its_cases(tmp_path: Path) -> None:
    import SimpleITK as sitk

    out = write_phantom_corpus(tmp_path / "corpus", n_cases=2, seed=5)
    meta = json.loads((out / "corpus.json").read_text())
    assert [c["case_id"] for c in meta["cases"]] == ["0001", "0002"]
    for case in corpus_cases(2, seed=5):
        image = sitk.ReadImage(str(out / "img" / f"img{case.case_id}.nii.gz"))
        assert image.GetSize() == (case.shape[2], case.shape[1], case.shape[0])
        assert image.GetSpacing() == pytest.approx((case.spacing_mm[2], case.spacing_mm[1], case.spacing_mm[0]))
        assert (out / "label" / f"label{case.case_id}.nii.gz").is_file()

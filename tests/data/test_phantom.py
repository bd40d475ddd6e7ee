"""Synthetic CT phantoms: deterministic, anatomically placed, plausible HU, readable layouts."""

from __future__ import annotations

import numpy as np
import pytest

from ragsam.data.phantom import make_phantom, write_phantom_case, write_phantom_dataset
from ragsam.errors import InputError, OutputExistsError

LIVER, SPLEEN, R_KIDNEY, L_KIDNEY, GALLBLADDER, ESOPHAGUS, AORTA, PANCREAS = 6, 1, 2, 3, 4, 5, 8, 11


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((32, 96, 96), (5.0, 4.0, 4.0), seed=7)


def _centroid(mask: np.ndarray) -> np.ndarray:
    """(z, y, x) mean index of a boolean mask."""
    return np.argwhere(mask).mean(axis=0)


def test_same_seed_same_case_other_seed_other_case():
    a_img, a_lab = make_phantom((8, 32, 32), seed=3)
    b_img, b_lab = make_phantom((8, 32, 32), seed=3)
    c_img, c_lab = make_phantom((8, 32, 32), seed=4)
    assert np.array_equal(a_img.array, b_img.array) and np.array_equal(a_lab.array, b_lab.array)
    assert not np.array_equal(a_lab.array, c_lab.array)
    assert not np.array_equal(a_img.array, c_img.array)


def test_types_shapes_and_geometry(phantom):
    image, labels = phantom
    assert image.array.dtype == np.int16 and image.array.shape == (32, 96, 96)
    assert labels.array.dtype == np.uint8 and labels.array.shape == (32, 96, 96)
    g = image.geometry
    assert g.size == (96, 96, 32) and g.spacing == (4.0, 4.0, 5.0)
    assert g.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # centred on the world origin: voxel (0,0,0) at -(n-1)/2 * spacing
    assert g.origin == (-190.0, -190.0, -77.5)
    assert labels.geometry == g
    assert set(np.unique(labels.array)) == {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11}


def test_plausible_hounsfield_units(phantom):
    image, labels = phantom
    hu, lab = image.array.astype(np.float32), labels.array
    median = {k: float(np.median(hu[lab == k])) for k in (LIVER, SPLEEN, AORTA, GALLBLADDER)}
    assert abs(median[LIVER] - 60) < 20 and abs(median[SPLEEN] - 50) < 20
    assert abs(median[AORTA] - 180) < 20 and abs(median[GALLBLADDER] - 10) < 20
    kidney = hu[(lab == R_KIDNEY) | (lab == L_KIDNEY)]
    assert 90 < np.median(kidney) < 170 and np.percentile(kidney, 90) > 130  # enhanced cortex
    assert abs(np.median(hu[:, :4, :4]) + 1000) < 30  # air in the corners
    assert np.max(hu[lab == 0]) > 350  # bone of the spine
    # the fat layer: along the middle row, going inwards from the air, fat comes before soft tissue
    row = hu[16, 48, :48]
    first_body = int(np.argmax(row > -500))
    assert -140 < np.median(row[first_body:first_body + 2]) < -60


def test_organs_in_their_anatomical_places(phantom):
    _, labels = phantom
    lab = labels.array
    nz, ny, nx = lab.shape
    liver, spleen = _centroid(lab == LIVER), _centroid(lab == SPLEEN)
    # canonical LPS: column 0 is patient right, row 0 anterior, z up
    assert liver[2] < nx / 2 and liver[1] < ny / 2  # right-anterior
    assert spleen[2] > nx / 2 and spleen[1] > ny / 2  # left-posterior
    assert _centroid(lab == R_KIDNEY)[2] < nx / 2 < _centroid(lab == L_KIDNEY)[2]
    assert _centroid(lab == AORTA)[1] < _centroid(lab == R_KIDNEY)[1] + 10
    assert _centroid(lab == ESOPHAGUS)[0] > 0.75 * (nz - 1)  # only high up
    # organs change along z: kidneys low, liver high, areas vary and organs vanish
    assert (lab[0] == LIVER).sum() == 0 and (lab[-1] == R_KIDNEY).sum() == 0
    areas = [(lab[z] == LIVER).sum() for z in range(nz)]
    assert max(areas) > 2 * min(a for a in areas if a > 0)


def test_cases_differ_by_seeded_jitter():
    centroids = [_centroid(make_phantom((16, 64, 64), seed=s)[1].array == LIVER) for s in range(3)]
    assert np.linalg.norm(centroids[0] - centroids[1]) > 0.1
    assert np.linalg.norm(centroids[1] - centroids[2]) > 0.1


def test_any_size_and_bad_sizes():
    image, labels = make_phantom((1, 7, 9), (2.0, 1.0, 1.5), seed=0)
    assert image.array.shape == (1, 7, 9) and image.geometry.spacing == (1.5, 1.0, 2.0)
    with pytest.raises(InputError, match=r"\(0, 8, 8\)"):
        make_phantom((0, 8, 8))
    with pytest.raises(InputError, match="spacing"):
        make_phantom((4, 8, 8), (1.0, -1.0, 1.0))


def test_written_case_reads_back_identically(tmp_path):
    from ragsam.data.volume import read_image, read_labels

    img_path, lab_path = write_phantom_case(tmp_path, "0001", (6, 20, 24), (3.0, 2.0, 2.0), seed=5)
    assert img_path == tmp_path / "img" / "img0001.nii.gz" and lab_path == tmp_path / "label" / "label0001.nii.gz"
    image, labels = make_phantom((6, 20, 24), (3.0, 2.0, 2.0), seed=5)
    back = read_image(img_path)
    assert np.array_equal(back.array, image.array.astype(np.float32))
    assert back.geometry == image.geometry
    assert np.array_equal(read_labels(lab_path, back).array, labels.array)
    with pytest.raises(OutputExistsError):
        write_phantom_case(tmp_path, "0001", (6, 20, 24), (3.0, 2.0, 2.0), seed=5)


@pytest.mark.parametrize("layout", ["btcv", "nnunet"])
def test_dataset_layouts_are_discovered(tmp_path, layout):
    from ragsam.data.layouts import discover_cases

    out = write_phantom_dataset(tmp_path / "ds", n_cases=3, layout=layout, seed=1, shape=(4, 16, 16))
    refs = discover_cases(out, layout="auto")
    assert len(refs) == 3 and all(r.labels is not None for r in refs)
    assert len({r.case_id for r in refs}) == 3
    with pytest.raises(OutputExistsError):
        write_phantom_dataset(out, n_cases=1, layout=layout)
    with pytest.raises(InputError, match="'weird'"):
        write_phantom_dataset(tmp_path / "x", n_cases=1, layout="weird")

"""Volume IO, label validation, pairing by physical geometry and label writing."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ragsam.data.geometry import Geometry
from ragsam.data.volume import Volume, from_sitk, read_image, read_labels, to_sitk, write_labels
from ragsam.errors import InputError, OutputExistsError

FLIP_Y = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=None) -> Path:
    image = sitk.GetImageFromArray(array)
    if array.ndim == 3:
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        if direction is not None:
            image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def _ramp(shape=(4, 8, 8)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.int16).reshape(shape)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_read_image_formats_round_trip_values_and_geometry(tmp_path: Path, suffix: str) -> None:
    arr = _ramp()
    path = _write(tmp_path / f"ct{suffix}", arr, spacing=(0.5, 0.75, 2.5), origin=(-10.0, 20.0, 30.5))
    vol = read_image(path)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))
    assert vol.geometry.size == (8, 8, 4)
    assert vol.geometry.spacing == (0.5, 0.75, 2.5)
    assert vol.geometry.origin == (-10.0, 20.0, 30.5)
    assert vol.path == path


def test_read_3mm_case_geometry(ct3mm: dict[str, Path]) -> None:
    vol = read_image(ct3mm["image"])
    labels = read_labels(ct3mm["labels"], vol)
    assert vol.geometry.size == (122, 101, 30)
    assert vol.array.shape == (30, 101, 122)
    assert vol.geometry.spacing == (3.0, 3.0, 3.0)
    # RAS storage: x and y axes point to -L and -P in LPS.
    assert vol.geometry.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert labels.array.dtype == np.uint8
    assert set(np.unique(labels.array)) == {0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13}
    # Same grid: pairing must be the identity.
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(ct3mm["labels"])))
    np.testing.assert_array_equal(labels.array, raw)


def test_bad_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.nii.gz", _ramp())
    data = good.read_bytes()
    cases: dict[str, bytes] = {
        "text.nii.gz": b"this is not an image\n",
        "truncated_gzip.nii.gz": data[: len(data) // 2],
        "truncated_nifti.nii.gz": gzip.compress(gzip.decompress(data)[:400]),
        "notes.mha": b"hello\n",
    }
    expected = {
        "text.nii.gz": "gzip",
        "truncated_gzip.nii.gz": "gzip",
        "truncated_nifti.nii.gz": "truncated NIfTI: 400 of 864 bytes",
        "notes.mha": "not a readable image",
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(InputError) as err:
            read_image(path)
        assert err.value.path == str(path)
        assert expected[name] in err.value.problem
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")
    # A valid two-member gzip stream (as bgzip writes) misses the trailer fast path but is read.
    raw = gzip.decompress(data)
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    np.testing.assert_array_equal(read_image(tmp_path / "members.nii.gz").array, _ramp().astype(np.float32))


def test_2d_and_4d_images_refused(tmp_path: Path) -> None:
    two_d = _write(tmp_path / "slice.nii.gz", np.zeros((8, 8), np.int16))
    with pytest.raises(InputError, match="2-D image of size 8x8"):
        read_image(two_d)
    frame = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(tmp_path / "t.nii.gz"))
    with pytest.raises(InputError, match="4-D image of size 8x8x4x2"):
        read_image(tmp_path / "t.nii.gz")
    # A 4-D file with a single time point is a 3-D volume.
    sitk.WriteImage(sitk.JoinSeries([frame]), str(tmp_path / "t1.nii.gz"))
    assert read_image(tmp_path / "t1.nii.gz").array.shape == (4, 8, 8)
    rgb = sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(InputError, match="3 components per voxel"):
        read_image(tmp_path / "rgb.nii.gz")


def test_label_values_checked(tmp_path: Path) -> None:
    integral = np.zeros((4, 8, 8), np.float32)
    integral[1, 2, 3] = 7.0
    labels = read_labels(_write(tmp_path / "f.nii.gz", integral))
    assert labels.array.dtype == np.uint8 and labels.array[1, 2, 3] == 7 and labels.array.sum() == 7
    frac = integral.copy()
    frac[0, 0, 0] = 2.5
    with pytest.raises(InputError, match="non-integer value 2.5"):
        read_labels(_write(tmp_path / "frac.nii.gz", frac))
    neg = np.zeros((4, 8, 8), np.int16)
    neg[3, 3, 3] = -4
    with pytest.raises(InputError, match="negative value -4"):
        read_labels(_write(tmp_path / "neg.nii.gz", neg))
    big = np.zeros((4, 8, 8), np.int32)
    big[0, 0, 0] = 300
    assert read_labels(_write(tmp_path / "big.nii.gz", big)).array.dtype == np.int16


def test_pairing_flipped_and_permuted_labels_is_exact(tmp_path: Path) -> None:
    image = read_image(_write(tmp_path / "ct.nii.gz", _ramp(), spacing=(1.0, 1.5, 2.0), origin=(5.0, -3.0, 7.0)))
    labels = np.random.default_rng(0).integers(0, 5, size=(4, 8, 8)).astype(np.uint8)
    # Same voxels stored with y flipped: row j of the file is row 7-j of the image.
    origin_flipped = (5.0, -3.0 + 7 * 1.5, 7.0)
    flipped = _write(tmp_path / "flip.nii.gz", labels[:, ::-1, :].copy(), (1.0, 1.5, 2.0), origin_flipped, FLIP_Y)
    np.testing.assert_array_equal(read_labels(flipped, image).array, labels)
    # Same voxels stored with x and z swapped (axis order z, y, x on disk).
    swap = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    swapped = _write(tmp_path / "swap.nii.gz", labels.transpose(2, 1, 0).copy(), (2.0, 1.5, 1.0), (5.0, -3.0, 7.0), swap)
    paired = read_labels(swapped, image)
    np.testing.assert_array_equal(paired.array, labels)
    assert paired.geometry == image.geometry


def test_pairing_refuses_other_voxels_with_a_clear_message(tmp_path: Path) -> None:
    image = read_image(_write(tmp_path / "ct.nii.gz", _ramp(), origin=(0.0, 0.0, 0.0)))
    lab = np.zeros((4, 8, 8), np.uint8)
    shifted = _write(tmp_path / "shift.nii.gz", lab, origin=(0.0, 0.0, 2.0))
    with pytest.raises(InputError) as err:
        read_labels(shifted, image)
    msg = str(err.value)
    assert msg.startswith(f"{shifted}: labels do not cover the same physical voxels as image")
    assert "offset (0, 0, 2) mm" in msg
    half = _write(tmp_path / "half.nii.gz", lab, origin=(0.5, 0.0, 0.0))
    with pytest.raises(InputError, match=r"offset \(0.5, 0, 0\) mm"):
        read_labels(half, image)
    small = _write(tmp_path / "small.nii.gz", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(InputError, match="size 8x8x3 vs 8x8x4 voxels"):
        read_labels(small, image)
    coarse = _write(tmp_path / "coarse.nii.gz", lab, spacing=(2.0, 2.0, 2.0))
    with pytest.raises(InputError, match=r"spacing \(2, 2, 2\) vs \(1, 1, 2\) mm"):
        read_labels(coarse, image)


def test_dicom_labels_pair_by_world_position(ct_dicom: dict[str, Path]) -> None:
    """Measured: paired liver 93 HU, spleen 80 HU, aorta 151 HU (medians).

    Index pairing (ignoring the flipped y axis) gives spleen -86 HU, aorta 12 HU and
    puts 15.6 % of the liver label on voxels below -200 HU (air/fat).
    """
    image = read_image(ct_dicom["image"])
    labels = read_labels(ct_dicom["labels"], image)
    naive = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_dicom["labels"])))
    hu, lab = image.array, labels.array
    assert float(np.median(hu[lab == 6])) == 93.0
    assert float(np.median(hu[lab == 1])) == 80.0
    assert float(np.median(hu[lab == 8])) == 151.0
    for organ in (1, 6):
        assert 70.0 <= float(np.median(hu[lab == organ])) <= 250.0
        assert np.mean(hu[lab == organ] < -200) < 0.001  # measured 0.0 % (spleen), 0.006 % (liver)
    assert float(np.median(hu[naive == 1])) == -86.0
    assert float(np.median(hu[naive == 8])) == 12.0
    assert round(float(np.mean(hu[naive == 6] < -200)), 3) == 0.156
    # The pairing is exactly the y flip the README describes.
    np.testing.assert_array_equal(lab, naive[:, ::-1, :])


def test_write_labels_round_trip_and_types(tmp_path: Path) -> None:
    geom = Geometry((8, 6, 4), (0.75, 0.5, 2.5), (-12.25, 40.5, -300.0), FLIP_Y)
    arr = np.zeros((4, 6, 8), np.int64)
    arr[1, 2, 3], arr[3, 5, 7] = 13, 255
    out = write_labels(arr, geom, tmp_path / "out" / "pred.nii.gz")
    back = read_labels(out)
    assert back.geometry == geom
    np.testing.assert_array_equal(back.array, arr)
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8
    with pytest.raises(OutputExistsError):
        write_labels(arr, geom, out)
    arr[0, 0, 0] = 300
    write_labels(arr, geom, out, force=True)
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkInt16
    assert read_labels(out).array[0, 0, 0] == 300
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.nii.gz"]  # no temporary left
    arr[0, 0, 0] = -1
    with pytest.raises(InputError, match="negative value -1"):
        write_labels(arr, geom, tmp_path / "neg.nii.gz")
    assert not (tmp_path / "neg.nii.gz").exists()


def test_write_labels_unwritable_output_is_an_input_error(tmp_path: Path) -> None:
    geom = Geometry((4, 3, 2), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), FLIP_Y)
    arr = np.ones((2, 3, 4), np.uint8)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"not_a_folder/pred.nii.gz: cannot be written \("):
        write_labels(arr, geom, blocker / "pred.nii.gz")  # its parent is a file
    with pytest.raises(InputError, match=r"pred.unknownext: cannot be written \(.*"):
        write_labels(arr, geom, tmp_path / "pred.unknownext")  # ITK has no writer for it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]  # no temporary file left


def test_sitk_conversion_and_geometry_json() -> None:
    geom = Geometry((3, 2, 2), (1.0, 2.0, 3.0), (1.5, -2.5, 0.25), FLIP_Y)
    vol = Volume(np.arange(12, dtype=np.float32).reshape(2, 2, 3), geom, Path("x"))
    image = to_sitk(vol)
    assert image.GetSize() == (3, 2, 2) and image.GetOrigin() == geom.origin
    back = from_sitk(image, "y")
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.geometry == geom and back.path == Path("y")
    assert Geometry.from_json(geom.to_json()) == geom
    with pytest.raises(ValueError, match="does not match geometry size"):
        Volume(np.zeros((3, 2, 2)), geom, Path("x"))


def test_describe_difference() -> None:
    a = Geometry((8, 8, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert a.describe_difference(a) is None
    assert a.describe_difference(Geometry(a.size, a.spacing, (0.0, 0.0, 1e-4), a.direction)) is None
    flipped = Geometry(a.size, a.spacing, (0.0, 7.0, 0.0), FLIP_Y)
    text = a.describe_difference(flipped)
    assert text is not None and "same physical voxels" in text and "offset (0, -7, 0) mm" in text
    assert a.voxel_mapping_to(flipped) == ((0, 1, 2), (False, True, False))
    moved = Geometry(a.size, a.spacing, (3.0, 0.0, 0.0), a.direction)
    assert a.voxel_mapping_to(moved) is None
    assert "voxel centres span (0, 0, 0)..(7, 7, 6) vs (3, 0, 0)..(10, 7, 6) mm" in (a.describe_difference(moved) or "")

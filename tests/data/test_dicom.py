"""DICOM series folders: HU, ordering, several series, missing and repeated slices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ragsam.data.dicom import list_series, select_series, slice_positions
from ragsam.data.volume import read_image
from ragsam.errors import InputError

SECOND_UID = "1.2.826.0.1.3680043.2.1125.99.1"


def _write_series(folder: Path, uid: str, n: int, z0: float = 0.0, dz: float = 2.0, shuffle: bool = False) -> None:
    """A tiny 8x8xN CT series written with SimpleITK's GDCM writer (voxel value = 10 * slice)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    order = list(range(n))[::-1] if shuffle else list(range(n))
    for i in order:
        sl = sitk.GetImageFromArray(np.full((8, 8), 10 * i, np.int16))
        sl.SetSpacing((0.5, 0.5))
        tags = {
            "0008|0060": "CT",
            "0008|103e": "second series",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.99.3",
            "0020|000e": uid,
            "0008|0018": f"{uid}.{i}",
            "0020|0013": str(i + 1),
            "0020|0032": f"-2\\-2\\{z0 + i * dz}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        # File names in reverse z order: the reader must sort by position, not name.
        writer.SetFileName(str(folder / f"img{n - i:03d}.dcm"))
        writer.Execute(sl)


def _copy_shared(ct_dicom: dict[str, Path], dst: Path) -> list[Path]:
    shutil.copytree(ct_dicom["image"], dst)
    return sorted(dst.iterdir())


def test_real_series_is_hu_and_ordered(ct_dicom: dict[str, Path]) -> None:
    vol = read_image(ct_dicom["image"])
    assert vol.geometry.size == (512, 512, 20)
    assert vol.geometry.spacing == (0.9765625, 0.9765625, 2.0)
    assert vol.geometry.origin == (-249.51171875, -437.51171875, -804.5)
    assert vol.array.dtype == np.float32
    # Stored values are unsigned (PixelRepresentation 0) with RescaleIntercept -1024:
    # outside the field of view stored 0 becomes -1024 HU only if the rescale is applied.
    assert float(vol.array.min()) == -1024.0
    series = list_series(ct_dicom["image"])
    assert len(series) == 1 and len(series[0].files) == 20 and series[0].description == "CT Body 3.0"
    z = slice_positions(series[0].files)
    np.testing.assert_allclose(z, -804.5 + 2.0 * np.arange(20))


def test_synthetic_series_sorted_by_position(tmp_path: Path) -> None:
    _write_series(tmp_path / "s", "1.2.3", 4, z0=10.0, dz=2.5)
    vol = read_image(tmp_path / "s")
    np.testing.assert_array_equal(vol.array[:, 0, 0], [0.0, 10.0, 20.0, 30.0])
    assert vol.geometry.spacing == (0.5, 0.5, 2.5)
    assert vol.geometry.origin == (-2.0, -2.0, 10.0)


def test_two_series_listed_and_selectable(tmp_path: Path, ct_dicom: dict[str, Path]) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in sorted(ct_dicom["image"].iterdir())[:5]:
        shutil.copy(f, folder)
    _write_series(folder, SECOND_UID, 3)
    with pytest.raises(InputError) as err:
        read_image(folder)
    msg = str(err.value)
    assert msg.startswith(f"{folder}: holds 2 DICOM series")
    assert "'(empty UID)' (5 slices, \"CT Body 3.0\")" in msg
    assert f"'{SECOND_UID}' (3 slices, \"second series\")" in msg
    second = read_image(folder, series_uid=SECOND_UID)
    assert second.geometry.size == (8, 8, 3)
    np.testing.assert_array_equal(second.array[:, 4, 4], [0.0, 10.0, 20.0])
    first = read_image(folder, series_uid="")
    assert first.geometry.size == (512, 512, 5)
    with pytest.raises(InputError, match="no DICOM series with UID '9.9'"):
        select_series(folder, "9.9")


def test_missing_slice_refused(tmp_path: Path, ct_dicom: dict[str, Path]) -> None:
    files = _copy_shared(ct_dicom, tmp_path / "gap")
    z_removed = float(slice_positions([files[7]])[0])
    assert z_removed == -780.5  # file names do not follow z order
    files[7].unlink()
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "gap")
    assert str(err.value) == (
        f"{tmp_path / 'gap'}: DICOM series has missing slices or irregular spacing: "
        "gap between z = -782.5..-778.5 (4 mm); the other slices are 2 mm apart"
    )


def test_repeated_slice_refused(tmp_path: Path, ct_dicom: dict[str, Path]) -> None:
    files = _copy_shared(ct_dicom, tmp_path / "dup")
    shutil.copy(files[3], tmp_path / "dup" / "copy.dcm")
    z = float(slice_positions([files[3]])[0])
    with pytest.raises(InputError, match=rf"repeated slices: two or more files at z = {z:g} mm"):
        read_image(tmp_path / "dup")


def test_folder_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder is empty"):
        read_image(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no DICOM series found"):
        read_image(tmp_path / "notes")
    (tmp_path / "study" / "series1").mkdir(parents=True)
    with pytest.raises(InputError, match=r"it has sub-folders \(series1\): pass the series folder itself"):
        read_image(tmp_path / "study")
    with pytest.raises(InputError, match="series_uid '1.2' given but the input is a file"):
        read_image(tmp_path / "notes" / "a.txt", series_uid="1.2")


def test_truncated_dicom_file_refused(tmp_path: Path, ct_dicom: dict[str, Path]) -> None:
    files = _copy_shared(ct_dicom, tmp_path / "cut")
    files[4].write_bytes(files[4].read_bytes()[:300])
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "cut")
    assert str(err.value) == f"{files[4]}: not a readable DICOM file (truncated or corrupt)"

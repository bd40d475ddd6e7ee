"""Raw-file checks: what SimpleITK hides (NaN read as 0, zero spacing read as 1 mm) is refused."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from ragsam.data.file_checks import MAX_VOXELS
from ragsam.data.volume import read_image, read_labels
from ragsam.errors import InputError


def _write(array: np.ndarray, path, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _patch_nifti(path, out, fn):
    data = path.read_bytes()
    raw = bytearray(gzip.decompress(data) if str(path).endswith(".gz") else data)
    fn(raw)
    if str(out).endswith(".gz"):
        out.write_bytes(gzip.compress(bytes(raw)))
    else:
        out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha", ".nrrd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_voxels_are_refused_naming_the_file(tmp_path, suffix, dtype):
    array = np.zeros((4, 5, 6), dtype)
    array[1, 2, 3] = np.nan
    array[3, 4, 5] = np.inf
    path = _write(array, tmp_path / f"ct{suffix}")
    if suffix.startswith(".nii"):
        # What SimpleITK hands back for a NIfTI: NaN and Inf silently become 0.
        assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()
    with pytest.raises(InputError, match=r"2 voxel\(s\) are not finite") as err:
        read_image(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_nan_labels_are_refused(tmp_path, suffix):
    array = np.ones((4, 5, 6), np.float32)
    array[0, 0, 0] = np.nan
    path = _write(array, tmp_path / f"labels{suffix}")
    with pytest.raises(InputError, match="not finite|non-finite"):
        read_labels(path)


def test_finite_float_image_reads_exactly(tmp_path):
    array = np.arange(120, dtype=np.float32).reshape(4, 5, 6) - 1000.5
    assert np.array_equal(read_image(_write(array, tmp_path / "ct.nii.gz")).array, array)


@pytest.mark.parametrize("value", [0.0, -2.0])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_zero_or_negative_nifti_spacing_is_refused(tmp_path, value, suffix, capfd):
    src = _write(np.zeros((4, 5, 6), np.int16), tmp_path / f"src{suffix}")

    def patch(raw):
        pix = list(struct.unpack("<8f", raw[76:108]))
        pix[3] = value
        raw[76:108] = struct.pack("<8f", *pix)

    path = _patch_nifti(src, tmp_path / f"bad{suffix}", patch)
    with pytest.raises(InputError, match=f"spacing must be positive, got pixdim.* = 1 1 {value:g}"):
        read_image(path)
    assert capfd.readouterr().err == ""  # no ITK warnings


@pytest.mark.parametrize("spacing", ["1 1 0", "1 1 -2"])
def test_zero_or_negative_metaimage_spacing_is_refused(tmp_path, spacing):
    raw = _write(np.zeros((4, 5, 6), np.int16), tmp_path / "ok.mha").read_bytes()
    i = raw.index(b"ElementSpacing")
    j = raw.index(b"\n", i)
    path = tmp_path / "bad.mha"
    path.write_bytes(raw[:i] + f"ElementSpacing = {spacing}".encode() + raw[j:])
    with pytest.raises(InputError, match=f"got ElementSpacing = {spacing}"):
        read_image(path)


def test_huge_header_is_refused_before_allocating(tmp_path):
    raw = _write(np.zeros((4, 5, 6), np.int16), tmp_path / "ok.mha").read_bytes()
    i = raw.index(b"DimSize")
    j = raw.index(b"\n", i)
    path = tmp_path / "huge.mha"
    path.write_bytes(raw[:i] + b"DimSize = 100000 100000 100000" + raw[j:])
    with pytest.raises(InputError, match=f"1e\\+15 voxels .*refusing more than {MAX_VOXELS}"):
        read_image(path)


def test_metaio_parse_errors_never_reach_the_terminal(tmp_path, capfd):
    """MetaIO prints its own parse errors to the process's stdout/stderr; we print one line of ours."""
    raw = _write(np.zeros((4, 5, 6), np.int16), tmp_path / "ok.mha").read_bytes()
    path = tmp_path / "longheader.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nComment = " + b"x" * 100_000 + b"\n" + raw)
    with pytest.raises(InputError, match="not a readable image"):
        read_image(path)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_a_gzip_stream_is_never_decompressed_past_the_promised_bytes(tmp_path, monkeypatch):
    from ragsam.data import file_checks

    array = np.full((12, 16, 16), -1000, np.int16)
    array[:, 4:12, 4:12] = 40
    good = _write(array, tmp_path / "ct.nii")
    needed = len(good.read_bytes())  # header + extension + voxels, exactly what the header promises
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as out:
        out.write(good.read_bytes())
        for _ in range(16):  # 64 MiB of trailing zeros, 64 KiB compressed
            out.write(bytes(4 << 20))
    read = []
    chunks = file_checks._chunks
    monkeypatch.setattr(file_checks, "_chunks", lambda *a, **k: (read.append(len(c)) or c for c in chunks(*a, **k)))
    assert file_checks.read_nifti_header(bomb)["voxels"] == 12 * 16 * 16
    file_checks.check_nifti_file(bomb)  # the gzip trailer disagrees: the stream is counted, up to `needed`
    assert sum(read) == 4 << 20 and needed < 4 << 20  # one 4 MiB chunk, not 64 MiB
    np.testing.assert_array_equal(read_image(bomb).array, array)
    with pytest.raises(InputError, match=r"header promises 3.07e\+03 voxels \(16x16x12\); refusing more than 3071"):
        file_checks.read_nifti_header(bomb, max_voxels=3071)

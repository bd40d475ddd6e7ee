"""Fetching a series (WADO-RS, as stored) and decoding its transfer syntaxes; the instance cache."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_fixtures import SERIES, STUDY, recode, write_series
from orthanc_server import PASSWORD, USER
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from ragsam.errors import InputError


def _pacs(orthanc):
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import Credentials

    return Pacs(orthanc.dicomweb, Credentials(user=USER, password=PASSWORD, source="test"))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless])
def test_compressed_series_decode_to_the_same_hu(orthanc, ct_dicom, tmp_path, syntax):
    """The shared series is JPEG 2000 lossless; re-encoded losslessly it must read back voxel for voxel."""
    import pydicom

    from ragsam.data.volume import read_image
    from ragsam.pacs.cache import InstanceCache
    from ragsam.pacs.series import fetch_series

    reference = read_image(write_series(ct_dicom, tmp_path / "j2k")).array
    orthanc.upload(write_series(ct_dicom, tmp_path / "series", change=recode(syntax)))
    fetched = fetch_series(_pacs(orthanc), InstanceCache(tmp_path / "cache"), STUDY, SERIES)
    stored = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
              for p in fetched.folder.iterdir()}
    assert stored == {syntax}  # fetched as stored, not transcoded by the server
    assert np.array_equal(read_image(fetched.folder).array, reference)


def test_cache_keeps_instances_by_uid_and_refuses_another_instance(orthanc, ct_dicom, tmp_path):
    from ragsam.pacs.cache import InstanceCache
    from ragsam.pacs.series import fetch_series

    orthanc.upload(write_series(ct_dicom, tmp_path / "series"))
    cache = InstanceCache(tmp_path / "cache")
    pacs = _pacs(orthanc)
    first = fetch_series(pacs, cache, STUDY, SERIES)
    assert (first.fetched, first.cached, first.description) == (20, 0, "CT Body 3.0")
    names = sorted(p.name for p in (tmp_path / "cache" / "instances").iterdir())
    assert names == sorted(f"{uid}.dcm" for uid in first.sop_uids)
    assert sorted(p.name for p in first.folder.iterdir()) == names
    again = fetch_series(pacs, cache, STUDY, SERIES)
    assert (again.fetched, again.cached, again.folder) == (0, 20, first.folder)
    dataset = pacs.retrieve(STUDY, SERIES, first.sop_uids[0])
    with pytest.raises(InputError, match="asked for instance 1.2.3, the PACS sent"):
        cache.put("1.2.3", dataset, "test")
    with pytest.raises(InputError, match="is not a DICOM UID"):
        cache.path("../1.2")

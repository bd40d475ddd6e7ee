"""The app's labels download as a DICOM SEG (``GET /api/scans/<id>/labels?format=dicom-seg``).

A zip of the shared DICOM series (UIDs restored, tests/dicom_series.py) is uploaded, segmented
and corrected as the page does it; the SEG download must hold exactly the corrected labels that
the NIfTI download holds. A NIfTI upload asked for a SEG gets the command line's one-line refusal.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from app_fixtures import RunningServer, free_port
from hostile import small_ct, zip_files
from test_server import _request, wait_for_scan

from dicom_series import copy_series


@pytest.fixture(scope="module")
def served(world, ct_dicom, tmp_path_factory):
    from ragsam.app import AppOptions, create_app

    root = tmp_path_factory.mktemp("segdl")
    series = copy_series(ct_dicom["image"], root / "series")
    session = create_app(AppOptions(bank=world["bank"], port=free_port(), state=root / "work", sam2_weights="tiny",
                                    k=2))
    server = RunningServer(session)
    yield server, series
    server.stop()


def test_a_corrected_dicom_scan_downloads_as_a_seg_equal_to_its_nifti(served):
    import pydicom

    from ragsam.data.dicom_seg import read_dicom_seg
    from ragsam.data.volume import read_image, read_labels, write_labels

    server, series = served
    members = {f"study/{f.name}": f.read_bytes() for f in sorted(series.iterdir())}
    status, scan = _request(server, "POST", "/api/scans?name=series.zip&mode=rag", body=zip_files(members))
    assert status == 201 and scan["dicom"] is True
    status, body = _request(server, "GET", f"/api/scans/{scan['id']}/labels?format=dicom-seg")
    if _request(server, "GET", f"/api/scans/{scan['id']}")[1]["state"] != "done":  # still segmenting
        assert status == 400 and body["error"] == "scan series.zip is not segmented yet"
    scan = wait_for_scan(server, scan["id"])
    assert scan["state"] == "done", scan["error"]

    # a correction: a block of liver painted into slice 10, sent as the page sends it
    image = read_image(series)
    state = server.session.state
    current = read_labels(state / "scans" / scan["id"] / "labels.nii.gz", reference=image)
    edited = current.array.copy()
    edited[10, 200:260, 200:260] = 6
    assert not np.array_equal(edited, current.array)
    write_labels(edited, image.geometry, state / "edit.nii.gz")
    status, body = _request(server, "PUT", f"/api/scans/{scan['id']}/labels", body=(state / "edit.nii.gz").read_bytes())
    assert status == 200 and 10 in body["corrected"]

    status, nifti, response = _request(server, "GET", f"/api/scans/{scan['id']}/labels", full=True)
    assert status == 200
    assert response.getheader("content-disposition") == f'attachment; filename="scan-{scan["id"]}_labels.nii.gz"'
    (state / "download.nii.gz").write_bytes(nifti)
    downloaded = read_labels(state / "download.nii.gz", reference=image).array
    assert np.array_equal(downloaded, edited)

    status, data, response = _request(server, "GET", f"/api/scans/{scan['id']}/labels?format=dicom-seg", full=True)
    assert status == 200 and response.getheader("content-type") == "application/dicom"
    assert response.getheader("content-disposition") == f'attachment; filename="scan-{scan["id"]}_labels.seg.dcm"'
    seg = pydicom.dcmread(io.BytesIO(data))
    assert seg.Modality == "SEG"
    assert seg.ManufacturerModelName == "RAG + corrections"  # the scan's method, corrected
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(next(series.iterdir())).SeriesInstanceUID
    assert np.array_equal(read_dicom_seg(seg, image, source_series=series), downloaded)

    status, body = _request(server, "GET", f"/api/scans/{scan['id']}/labels?format=both")
    assert status == 400 and body == {"error": "format must be one of nifti, dicom-seg, got 'both'"}


def test_a_nifti_scan_asked_for_a_seg_gets_one_line(served):
    server, _ = served
    status, scan = _request(server, "POST", "/api/scans?name=small.nii.gz&mode=rag", body=small_ct())
    assert status == 201 and scan["dicom"] is False
    status, body = _request(server, "GET", f"/api/scans/{scan['id']}/labels?format=dicom-seg")
    assert status == 400
    assert body == {"error": "scan small.nii.gz is a NIfTI upload; a DICOM SEG needs the source DICOM series"}
    status, body = _request(server, "GET", "/api/scans/00000000/labels?format=dicom-seg")
    assert status == 404
    wait_for_scan(server, scan["id"])

"""The app with a PACS (``ragsam app --pacs``): list studies, open one as a scan, correct it, save a SEG.

A real Orthanc (tests/pacs/orthanc_server.py) holds the shared DICOM series; the app's HTTP
API is driven as the page drives it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import RunningServer, free_port
from test_server import _request, wait_for_scan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pacs"))
from dicom_fixtures import SERIES, STUDY, write_series  # noqa: E402
from orthanc_server import PASSWORD, USER, Orthanc  # noqa: E402


@pytest.fixture
def linked(world, ct_dicom, tmp_path, monkeypatch):
    """An Orthanc holding the shared series and an app configured with it."""
    from ragsam.app import AppOptions, create_app

    monkeypatch.setenv("RAGSAM_PACS_USER", USER)
    monkeypatch.setenv("RAGSAM_PACS_PASSWORD", PASSWORD)
    orthanc = Orthanc(tmp_path / "orthanc").start()
    orthanc.upload(write_series(ct_dicom, tmp_path / "series"))
    session = create_app(AppOptions(bank=world["bank"], port=free_port(), state=tmp_path / "work", sam2_weights="tiny",
                                    k=2, pacs=orthanc.dicomweb, pacs_cache=tmp_path / "cache"))
    server = RunningServer(session)
    yield server, orthanc, tmp_path / "series"
    server.stop()
    orthanc.stop()


def test_open_correct_and_save_to_pacs(linked):
    from ragsam.data.dicom_seg import read_dicom_seg
    from ragsam.data.volume import read_image, read_labels, write_labels
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import Credentials

    server, orthanc, folder = linked
    assert _request(server, "GET", "/api/info")[1]["pacs"] is True
    status, studies = _request(server, "GET", "/api/pacs/studies")
    assert status == 200 and [(s["study_uid"], s["modalities"]) for s in studies] == [(STUDY, ["CT"])]

    status, scan = _request(server, "POST", f"/api/pacs/open?study={STUDY}&mode=rag")
    assert status == 201 and scan["pacs"] == {"study": STUDY, "series": SERIES}
    scan = wait_for_scan(server, scan["id"])
    assert scan["state"] == "done", scan["error"]

    # a correction: a block of liver painted into slice 10, sent as the page sends it
    labels_path = server.session.state / "scans" / scan["id"] / "labels.nii.gz"
    image = read_image(folder)
    current = read_labels(labels_path, reference=image)
    edited = current.array.copy()
    edited[10, 200:260, 200:260] = 6
    write_labels(edited, image.geometry, server.session.state / "edit.nii.gz")
    status, body = _request(server, "PUT", f"/api/scans/{scan['id']}/labels",
                            body=(server.session.state / "edit.nii.gz").read_bytes())
    assert status == 200 and body["corrected"]

    status, saved = _request(server, "POST", f"/api/scans/{scan['id']}/pacs")
    assert status == 200 and saved["stored"] is True and saved["study"] == STUDY
    assert orthanc.modalities(STUDY) == ["CT", "SEG"]
    pacs = Pacs(orthanc.dicomweb, Credentials(user=USER, password=PASSWORD, source="test"))
    seg = pacs.retrieve(STUDY, saved["series"], saved["seg"])
    assert np.array_equal(read_dicom_seg(seg, image, source_series=folder), edited)
    status, again = _request(server, "POST", f"/api/scans/{scan['id']}/pacs")  # unchanged: not stored twice
    assert status == 200 and again["stored"] is False and again["seg"] == saved["seg"]
    assert orthanc.instance_count() == 21


def test_pacs_errors_are_one_line(linked, world, tmp_path):
    from ragsam.app import AppOptions, create_app

    server, orthanc, _ = linked
    status, body = _request(server, "POST", "/api/pacs/open?study=1.2.3.999&mode=rag")
    assert status == 400 and body["error"].endswith("no study 1.2.3.999 on the PACS") and "\n" not in body["error"]
    status, body = _request(server, "POST", f"/api/pacs/open?study={STUDY}&mode=finetuned")
    assert status == 400 and "needs a fine-tuned run" in body["error"]
    orthanc.stop()
    status, body = _request(server, "GET", "/api/pacs/studies")
    assert status == 400 and "cannot connect to the PACS" in body["error"]
    plain = RunningServer(create_app(AppOptions(bank=world["bank"], port=free_port(), state=tmp_path / "plain",
                                                sam2_weights="tiny", k=2)))
    try:
        assert _request(plain, "GET", "/api/pacs/studies")[0] == 404
        assert _request(plain, "GET", "/api/info")[1]["pacs"] is False
    finally:
        plain.stop()

"""The app with a PACS in a real browser (Debian's Chromium, headless, Playwright): open a study from
the PACS list, paint a correction, "Save to PACS"; the SEG in the real Orthanc holds the painted labels.

Writes docs/app/7-pacs-saved.png (the scan opened from the PACS, its segmentation saved as a SEG).
Fails (never skips) without Chromium or Orthanc.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from app_fixtures import RunningServer, free_port
from test_browser import _shot, app_tab

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pacs"))
from dicom_fixtures import SERIES, STUDY, write_series  # noqa: E402
from orthanc_server import PASSWORD, USER, Orthanc  # noqa: E402


@pytest.fixture(scope="module")
def pacs_app(world, ct_dicom, tmp_path_factory):
    from ragsam.app import AppOptions, create_app

    root = tmp_path_factory.mktemp("browser-pacs")
    secret = root / "pacs.json"
    secret.write_text(f'{{"user": "{USER}", "password": "{PASSWORD}"}}', encoding="utf-8")
    secret.chmod(0o600)
    orthanc = Orthanc(root / "orthanc").start()
    orthanc.upload(write_series(ct_dicom, root / "series"))
    session = create_app(AppOptions(bank=world["bank"], port=free_port(), state=root / "work", sam2_weights="tiny",
                                    k=2, pacs=orthanc.dicomweb, pacs_credentials=secret, pacs_cache=root / "cache"))
    server = RunningServer(session)
    yield server, orthanc, root / "series"
    server.stop()
    orthanc.stop()


def test_open_from_pacs_paint_and_save_to_pacs(pacs_app):
    from ragsam.data.dicom_seg import read_dicom_seg
    from ragsam.data.volume import read_image, read_labels
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import Credentials

    server, orthanc, folder = pacs_app
    with app_tab(server) as (page, errors):
        page.wait_for_selector(f"#studies li[data-study='{STUDY}']", timeout=30_000)
        assert "Test^Abdomen" in page.inner_text("#studies")
        page.click(f"#studies li[data-study='{STUDY}']")
        page.wait_for_function("() => (document.body.dataset.loaded || '').startsWith('scan:') || "
                               "document.querySelector('#message').textContent.length > 0", timeout=600_000)
        assert page.inner_text("#message") == ""
        scan_id = page.evaluate("() => window.ragsam.state.current.scan.id")
        assert page.evaluate("() => window.ragsam.state.current.scan.pacs") == {"study": STUDY, "series": SERIES}
        assert page.is_visible("#save-pacs") and page.is_visible("#download-seg")  # a DICOM scan: SEG download
        page.fill("#opacity", "0.35")
        page.dispatch_event("#opacity", "input")
        # paint: brush with liver across the middle of the axial view
        page.select_option("#organ", "6")
        page.click("#tool-brush")
        box = page.locator("#gl1").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 40, cy)
        page.mouse.down()
        page.mouse.move(cx + 40, cy, steps=10)
        page.mouse.up()
        page.click("#save-pacs")
        page.wait_for_function("() => document.querySelector('#message').textContent.startsWith('stored SEG')",
                               timeout=120_000)
        _shot(page, "7-pacs-saved")
        download = page.request.get(server.base + page.get_attribute("#download-seg", "href"))
        assert download.ok and download.headers["content-type"] == "application/dicom"
        downloaded = pydicom.dcmread(io.BytesIO(download.body()))
        assert not errors, errors

    assert orthanc.modalities(STUDY) == ["CT", "SEG"]
    labels = read_labels(server.session.state / "scans" / scan_id / "labels.nii.gz")
    pacs = Pacs(orthanc.dicomweb, Credentials(user=USER, password=PASSWORD, source="test"))
    (item,) = pacs.find_instances(STUDY, {"Modality": "SEG"})
    seg = pacs.retrieve(STUDY, item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
    stored = read_dicom_seg(seg, read_image(folder), source_series=folder)
    assert np.array_equal(stored, labels.array)  # the SEG is the page's saved labels, correction included
    assert downloaded.SOPInstanceUID == seg.SOPInstanceUID  # "Download DICOM SEG" gives the very SEG stored
    scan = server.session.app.state.scans.get(scan_id)
    assert scan.corrected  # the brush stroke changed slices before the save

"""Uploads and corrections survive an app restart (``--state``); a damaged scan record is skipped, not fatal.

Driven through the HTTP API as the page drives it: upload, segment, correct one slice, stop
the server, start a new one over the same state folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from app_fixtures import RunningServer, free_port
from test_server import _request, wait_for_scan

#: A display name that would be markup if the page rendered it as HTML: it must come back as the same text.
NAME = "Abdomen <img src=x onerror=alert(1)> & co.nii.gz"


def _start(world, state: Path) -> RunningServer:
    from ragsam.app import AppOptions, create_app

    return RunningServer(create_app(AppOptions(bank=world["bank"], port=free_port(), state=state,
                                               sam2_weights="tiny", k=2)))


def _upload(server, name: str, body: bytes) -> dict:
    from urllib.parse import quote

    status, scan = _request(server, "POST", f"/api/scans?name={quote(name)}&mode=rag", body=body)
    assert status == 201, scan
    return scan


def _wait(server, scan_id: str) -> dict:
    scan = wait_for_scan(server, scan_id)
    assert scan["state"] == "done", scan["error"]
    return scan


def _labels(server, scan: dict):
    """The scan's labels as the page downloads them (uint8 array, z y x)."""
    from ragsam.data.volume import read_labels

    status, data = _request(server, "GET", "/files/" + "/".join(scan["labels"]))
    assert status == 200
    path = server.session.state / f"download-{scan['id']}.nii.gz"
    path.write_bytes(data)
    return read_labels(path).array


def test_uploads_and_corrections_survive_a_restart(world, tmp_path, caplog):
    from ragsam.data.volume import read_image, write_labels

    state = tmp_path / "state"
    image_bytes = Path(world["first_image"]).read_bytes()
    image = read_image(world["first_image"])
    first = _start(world, state)
    try:
        kept = _wait(first, _upload(first, NAME, image_bytes)["id"])
        broken = _wait(first, _upload(first, "second.nii.gz", image_bytes)["id"])
        # a correction: liver (6) painted into a block of slice 5 where the segmentation has none
        segmented = _labels(first, kept)
        edited = segmented.copy()
        block = (5, slice(10, 30), slice(12, 40))
        assert (edited[block] != 6).any()
        edited[block] = 6
        write_labels(edited, image.geometry, tmp_path / "edit.nii.gz")
        status, body = _request(first, "PUT", f"/api/scans/{kept['id']}/labels",
                                body=(tmp_path / "edit.nii.gz").read_bytes())
        assert status == 200 and len(body["corrected"]) == 1
        corrected = body["corrected"]
        before = _request(first, "GET", f"/api/scans/{kept['id']}")[1]
    finally:
        first.stop()

    # a crash while the second scan's record was written: only its first half reached the disk
    record = state / "scans" / broken["id"] / "scan.json"
    record.write_bytes(record.read_bytes()[: len(record.read_bytes()) // 2])
    # a scan whose segmentation the stop interrupted: queued again at start
    pending = state / "scans" / "0000beef"
    shutil.copytree(state / "scans" / kept["id"] / "input", pending / "input")
    fields = json.loads((state / "scans" / kept["id"] / "scan.json").read_text())
    fields.update(id="0000beef", name="pending.nii.gz", state="running", runs=0, corrected=[], created=0.0)
    (pending / "scan.json").write_text(json.dumps(fields))

    with caplog.at_level(logging.WARNING, logger="ragsam.app"):
        second = _start(world, state)
    try:
        damaged = [r.getMessage() for r in caplog.records if r.name == "ragsam.app"]
        assert len(damaged) == 1 and str(record) in damaged[0] and "unreadable" in damaged[0]
        status, listed = _request(second, "GET", "/api/scans")
        assert status == 200 and [s["id"] for s in listed] == ["0000beef", kept["id"]]
        again = _request(second, "GET", f"/api/scans/{kept['id']}")[1]
        assert again == before and again["name"] == NAME and again["state"] == "done"
        assert again["corrected"] == corrected and again["runs"] == 1
        assert np.array_equal(_labels(second, again), edited)  # voxel for voxel the corrected labels
        # the restored scan takes further corrections (its slice stack is rebuilt from the input)
        edited[block[0] + 2, 10:20, 12:20] = 1
        write_labels(edited, image.geometry, tmp_path / "edit2.nii.gz")
        status, body = _request(second, "PUT", f"/api/scans/{kept['id']}/labels",
                                body=(tmp_path / "edit2.nii.gz").read_bytes())
        assert status == 200 and len(body["corrected"]) == 2 and set(corrected) < set(body["corrected"])
        resumed = _wait(second, "0000beef")
        assert resumed["runs"] == 1 and resumed["name"] == "pending.nii.gz"
        assert np.array_equal(_labels(second, resumed), segmented)  # same input, same model: same labels
    finally:
        second.stop()
    stored = json.loads((state / "scans" / kept["id"] / "scan.json").read_text())
    assert stored["version"] == 1 and stored["corrected"] == body["corrected"] and stored["name"] == NAME


@pytest.mark.parametrize("change, says", [
    ({"version": 2}, "version 2; this ragsam reads version 1"),
    ({"input": "../../../etc/passwd"}, "escapes"),
    ({"name": "evil\u202egpj.nii.gz"}, "control characters"),
    ({"id": "00000000"}, "is not its folder's name"),
    ({"runs": "1"}, "field 'runs' is not a int"),
])
def test_a_record_that_does_not_hold_is_skipped(tmp_path, caplog, change, says):
    from ragsam.app.scan_record import ScanRecord, load_records

    folder = tmp_path / "scans" / "1a2b3c4d"
    (folder / "input").mkdir(parents=True)
    (folder / "input" / "scan.nii.gz").write_bytes(b"x")
    ScanRecord("1a2b3c4d", "a.nii.gz", "rag", "input/scan.nii.gz").write(folder)
    assert [r.name for _, r in load_records(tmp_path / "scans", ("rag",))] == ["a.nii.gz"]
    (folder / "scan.json").write_text(json.dumps({**json.loads((folder / "scan.json").read_text()), **change}))
    with caplog.at_level(logging.WARNING, logger="ragsam.app"):
        assert load_records(tmp_path / "scans", ("rag",)) == []
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"ragsam app: skipped a damaged scan: {folder / 'scan.json'}: ") and says in line


def test_one_app_per_state_folder_and_the_default_folder(world, tmp_path, monkeypatch):
    from ragsam.app import AppOptions, create_app
    from ragsam.app.options import default_state_dir
    from ragsam.utils.locking import FolderLockedError

    monkeypatch.delenv("RAGSAM_APP_STATE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir(8799) == tmp_path / "xdg" / "ragsam" / "app" / "port-8799"
    session = create_app(AppOptions(data=world["data"], port=8799))
    try:
        assert session.state == tmp_path / "xdg" / "ragsam" / "app" / "port-8799"
        assert (session.state / "scans").stat().st_mode & 0o777 == 0o700
        with pytest.raises(FolderLockedError):
            create_app(AppOptions(data=world["data"], port=8799))
    finally:
        session.close()
    create_app(AppOptions(data=world["data"], port=8799)).close()  # released: the next app may serve it
    monkeypatch.setenv("RAGSAM_APP_STATE", str(tmp_path / "mine"))
    assert default_state_dir(8799) == tmp_path / "mine"

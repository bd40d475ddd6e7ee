"""A real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) for the PACS tests.

Each :class:`Orthanc` runs on a free 127.0.0.1 port with its own temporary storage folder,
the DICOMweb plugin loaded, the DICOM (C-STORE) server disabled, no remote access and HTTP
basic authentication on (:data:`USER` / :data:`PASSWORD`), so a 401 can be tested. The
fixtures FAIL (never skip) when Orthanc or its plugin is missing: ``tools/ensure-test-packages.sh``
installs them (``make test`` runs it).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

USER = "ragsam-test"
PASSWORD = "pacs-test-password"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 60.0


def _orthanc_binary() -> str:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    if found is None or not PLUGIN.is_file():
        pytest.fail("Orthanc with its DICOMweb plugin is missing (/usr/sbin/Orthanc, "
                    f"{PLUGIN}); run tools/ensure-test-packages.sh (make test does) - these tests must not be skipped")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """One Orthanc process; :meth:`kill` and :meth:`start` again keep its storage (a restart)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = root / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = root / "orthanc.log"

    @property
    def url(self) -> str:
        """The Orthanc REST root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root (what ``ragsam pacs`` is given)."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return USER, PASSWORD

    def _write_config(self) -> Path:
        config = {
            "Name": "ragsam-test", "StorageDirectory": str(self.storage), "IndexDirectory": str(self.storage),
            "HttpPort": self.port, "DicomServerEnabled": False, "DicomPort": free_port(),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "HttpCompressionEnabled": False, "SaveJobs": False,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    def start(self) -> Orthanc:
        """Start (or restart on the same storage) and wait until the REST API answers."""
        binary = _orthanc_binary()
        config = self._write_config()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Orthanc exited with {self.process.returncode} at start: "
                            f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"Orthanc did not answer within {START_TIMEOUT_S:.0f} s: {self.log.read_text(errors='replace')[-2000:]}")

    def kill(self) -> None:
        """SIGKILL (a crash, or the network cut): nothing is flushed or closed cleanly."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        self.process = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), SIGKILL if it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.process = None

    # --- Orthanc's own REST API: how a test looks at the PACS independently of ragsam ---
    def rest(self, path: str) -> object:
        response = requests.get(f"{self.url}{path}", auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def upload(self, files: list[Path] | Path) -> list[str]:
        """POST each DICOM file to ``/instances`` (Orthanc's REST upload); their Orthanc ids."""
        paths = sorted(files.iterdir()) if isinstance(files, Path) else files
        ids = []
        for path in paths:
            response = requests.post(f"{self.url}/instances", data=path.read_bytes(), auth=self.auth, timeout=60)
            response.raise_for_status()
            ids.append(response.json()["ID"])
        return ids

    def instance_count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])  # type: ignore[index]

    def modalities(self, study_uid: str) -> list[str]:
        """Modality of every series of a study (sorted), read from Orthanc's own index."""
        found = requests.post(f"{self.url}/tools/find", auth=self.auth, timeout=30,
                              json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
        found.raise_for_status()
        return sorted(s["MainDicomTags"].get("Modality", "") for s in found.json())

    def delete_modality(self, study_uid: str, modality: str) -> int:
        """Delete every series of ``modality`` in a study (Orthanc REST); how many were deleted."""
        found = requests.post(f"{self.url}/tools/find", auth=self.auth, timeout=30,
                              json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid, "Modality": modality}})
        found.raise_for_status()
        for orthanc_id in found.json():
            requests.delete(f"{self.url}/series/{orthanc_id}", auth=self.auth, timeout=30).raise_for_status()
        return len(found.json())

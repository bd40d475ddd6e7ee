"""Fixtures of the PACS tests: a real Orthanc per test (:mod:`orthanc_server`), tiny models per session.

They FAIL (never skip) when Orthanc or its DICOMweb plugin is missing (``tools/ensure-test-packages.sh``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # orthanc_server, models, dicom_fixtures

from orthanc_server import PASSWORD, USER, Orthanc  # noqa: E402


@pytest.fixture
def orthanc(tmp_path):
    """A fresh, empty Orthanc for one test (about a second to start)."""
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


@pytest.fixture
def pacs_env(monkeypatch, orthanc):
    """The credentials in the environment variables ``ragsam pacs`` reads, and a cache folder of the test."""
    monkeypatch.setenv("RAGSAM_PACS_USER", USER)
    monkeypatch.setenv("RAGSAM_PACS_PASSWORD", PASSWORD)
    monkeypatch.delenv("RAGSAM_PACS_TOKEN", raising=False)
    monkeypatch.setenv("RAGSAM_PACS_CACHE", str(orthanc.root.parent / "pacs-cache"))
    return orthanc



@pytest.fixture(scope="session")
def tiny_bank(ct3mm, tmp_path_factory):
    from models import build_bank

    return build_bank(ct3mm, tmp_path_factory.mktemp("pacs-bank"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from models import train_run

    return train_run(tmp_path_factory.mktemp("pacs-run"))

"""Shared test fixtures.

Tests that need real CT use the ``shared_data`` fixture: the two abdominal CT
cases copied into ``tests/assets/real-ct`` (Apache-2.0, TotalSegmentator's test
references; see the README there), so the suite runs from a fresh clone alone.
The fixture FAILS (never skips) when the folder is missing.
``RAGSAM_SHARED_DATA`` may point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run tiny models: one thread is faster than two (thread start-up, a shared 2-core CI).

    ``RAGSAM_THREADS=1`` keeps the commands' own thread rule (``ragsam.utils.threads``) at one too.
    ``RAGSAM_TEST_THREADS=N`` runs the suite at N threads instead: the suite must pass at 1 and 2
    (another reduction order; docs/testing.md).
    """
    threads = int(os.environ.get("RAGSAM_TEST_THREADS", "1"))
    before, env = torch.get_num_threads(), os.environ.get("RAGSAM_THREADS")
    torch.set_num_threads(threads)
    os.environ["RAGSAM_THREADS"] = str(threads)
    os.environ.setdefault("RAGSAM_JOBS", "1")  # --jobs tests ask for processes explicitly
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("RAGSAM_THREADS", None)
    else:
        os.environ["RAGSAM_THREADS"] = env


def _shared_data_dir() -> Path:
    env = os.environ.get("RAGSAM_SHARED_DATA")
    return Path(env) if env else REPO_ROOT / "tests" / "assets" / "real-ct"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``tests/assets/real-ct`` (abdomen-ct-3mm/, abdomen-ct-dicom/, labels-btcv.json)."""
    path = _shared_data_dir()
    if not (path / "abdomen-ct-3mm" / "ct.nii.gz").is_file():
        pytest.fail(f"real CT test data not found at {path}; these tests must not be skipped")
    return path


@pytest.fixture(scope="session")
def ct3mm(shared_data: Path) -> dict[str, Path]:
    """The 3 mm NIfTI case: {'image', 'labels'}."""
    d = shared_data / "abdomen-ct-3mm"
    return {"image": d / "ct.nii.gz", "labels": d / "labels.nii.gz"}


@pytest.fixture(scope="session")
def ct_dicom(shared_data: Path) -> dict[str, Path]:
    """The DICOM case: {'image': series folder, 'labels': NIfTI with a flipped y axis}."""
    d = shared_data / "abdomen-ct-dicom"
    return {"image": d / "dicom", "labels": d / "labels.nii.gz"}

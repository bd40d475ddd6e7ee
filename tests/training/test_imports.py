"""Training and the model side of inference import without SimpleITK, MONAI, faiss, matplotlib or the DICOM
libraries (highdicom, pydicom: imported by ``data.dicom_seg`` / ``inference.outputs`` inside their functions)."""

from __future__ import annotations

import subprocess
import sys


def test_training_imports_only_light_dependencies():
    code = ("import sys, ragsam.training, ragsam.training.loop, ragsam.inference, ragsam.inference.outputs, "
            "ragsam.data.dicom_seg; "
            "heavy = [m for m in ('SimpleITK', 'monai', 'faiss', 'matplotlib', 'highdicom', 'pydicom') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""Training and the model side of inference import without SimpleITK, MONAI, faiss or matplotlib."""

from __future__ import annotations

import subprocess
import sys


def test_training_imports_only_light_dependencies():
    code = ("import sys, ragsam.training, ragsam.training.loop, ragsam.inference; "
            "heavy = [m for m in ('SimpleITK', 'monai', 'faiss', 'matplotlib') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""The tiny random models of the segment / predict tests, for the PACS tests (built once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

from ragsam.cli.main import run_cli


def build_bank(ct3mm: dict[str, Path], root: Path) -> Path:
    """A tiny-embedder bank over the shared 3 mm case (32-pixel slices), as tests/cli/test_segment_cmd.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "retrieval"))
    from bank_fixtures import tiny_ct_bank

    return tiny_ct_bank(ct3mm, root)


def train_run(root: Path) -> Path:
    """A one-iteration tiny SAM run on a phantom (32-pixel slices), as tests/cli/test_predict_cmd.py."""
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    write_phantom_dataset(root / "src", n_cases=1, shape=(4, 32, 32), seed=5)
    prepare_dataset(root / "src", root / "prep", PrepareOptions(SliceSettings(size=32), split="none"))
    run = root / "run"
    code = run_cli(["train", "--config", "tiny", "--prepared", str(root / "prep"), "--out", str(run),
                    "model.image_size=32", "optim.max_iterations=1", "log.tensorboard=false", "device=cpu"])
    assert code == 0
    return run

"""A tiny phantom support bank for the ``train-rag`` tests (3 cases of 5 slices, 32 px, tiny embedder)."""

from __future__ import annotations

from pathlib import Path

RUN_BASE = ["model.weights=tiny", "data.k=1", "device=cpu", "log.tensorboard=false", "log.progress=false",
            "log.every=1", "optim.batch_size=1", "optim.warmup=1"]


def write_phantom_bank(root: Path, n_cases: int = 3, depth: int = 5, seed: int = 3) -> Path:
    """Phantom dataset -> prepared cache (32 px, no split) -> bank of every case; returns the bank folder."""
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings
    from ragsam.retrieval.bank import BankOptions, build_bank

    write_phantom_dataset(root / "src", n_cases=n_cases, shape=(depth, 32, 32), seed=seed)
    prepare_dataset(root / "src", root / "prep", PrepareOptions(settings=SliceSettings(size=32), split="none"))
    build_bank(root / "prep", root / "bank", BankOptions(embedder_weights="tiny", image_size=28))
    return root / "bank"

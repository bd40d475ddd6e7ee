"""A tiny app world for the tests: a 64 px phantom dataset, its slice cache, a tiny-DINOv2 bank, predictions.

The "rag" prediction folder holds each case's ground truth with its liver (id 6) removed, so
the page has a prediction whose Dice we know by hand: 1 for every organ but the liver, 0 there.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np

PHANTOM_SHAPE = (12, 64, 64)


def build_world(root: Path) -> dict[str, Path]:
    """Write data/, prepared/, bank/, predictions/rag/ under ``root``; returns their paths."""
    import torch

    from ragsam.data.layouts import discover_cases
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings
    from ragsam.data.volume import read_labels, write_labels
    from ragsam.retrieval.bank import BankOptions, build_bank

    data = write_phantom_dataset(root / "data", n_cases=3, shape=PHANTOM_SHAPE, spacing_mm=(8.0, 6.0, 6.0))
    prepared = root / "prepared"
    prepare_dataset(data, prepared, PrepareOptions(settings=SliceSettings(size=64), split="none"))
    torch.manual_seed(0)
    refs = discover_cases(data)
    build_bank(prepared, root / "bank", BankOptions(embedder_weights="tiny", image_size=28, cases=[r.case_id for r in refs[1:]]))  # case 1 stays out of the bank (the "test" case)
    for ref in refs:
        gt = read_labels(ref.labels)
        pred = np.where(gt.array == 6, 0, gt.array).astype(np.uint8)
        write_labels(pred, gt.geometry, root / "predictions" / "rag" / f"{ref.case_id}.nii.gz")
    return {"root": root, "data": data, "prepared": prepared, "bank": root / "bank",
            "predictions": root / "predictions", "cases": [r.case_id for r in refs],
            "first_image": refs[0].image, "first_labels": refs[0].labels}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """uvicorn serving a :class:`ragsam.app.Session` in a thread (stopped with :meth:`stop`)."""

    def __init__(self, session) -> None:
        import uvicorn

        self.session = session
        self.server = uvicorn.Server(uvicorn.Config(session.app, host=session.host, port=session.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the app server did not start")
            time.sleep(0.05)

    @property
    def base(self) -> str:
        return f"http://{self.session.host}:{self.session.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

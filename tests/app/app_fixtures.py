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
        self.session.close()


_SERVE = """
import json, sys
from ragsam.app import AppOptions, create_app, serve
options = json.loads(sys.argv[1])
session = create_app(AppOptions(**options))
print(json.dumps({"token": session.token}), flush=True)
serve(session)
"""


class ServerProcess:
    """``ragsam.app`` served by uvicorn in a child process, so that its peak memory is its own.

    Args:
        options: :class:`ragsam.app.AppOptions` fields (JSON-able; ``port`` is chosen here).
    """

    def __init__(self, **options) -> None:
        import json
        import os
        import subprocess
        import sys

        import ragsam

        self.host, self.port = "127.0.0.1", free_port()
        options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
        options.update(host=self.host, port=self.port)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(ragsam.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen([sys.executable, "-c", _SERVE, json.dumps(options)], env=env,
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the app server process exited ({self.process.wait()})")
        self.token = json.loads(line)["token"]
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the app server process did not start") from None
                time.sleep(0.1)

    def memory(self) -> dict[str, int]:
        """``{"rss": now, "peak": highest so far}`` in bytes (``VmRSS`` / ``VmHWM`` of /proc/PID/status)."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields["rss" if key == "VmRSS" else "peak"] = int(value.split()[0]) * 1024
        return fields

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except Exception:  # noqa: BLE001 - a server that ignores SIGTERM is killed
            self.process.kill()
            self.process.wait()

"""``pretrain_tiny``: build the corpus and pre-train the three tiny foundation models (``ragsam pretrain-tiny``).

Stages::

    corpus       ragsam.data.phantom_corpus.write_phantom_corpus (seeds apart from every demo case)
    prepare      ragsam.data.prepare.prepare_dataset (every case "train", 64 px)
    sam          ragsam.pretrain.tiny_sam   (ragsam train, tiny SAM from random, all weights)
    embedder     ragsam.pretrain.embedder   (tiny DINOv2, organ content + height objective)
    bank         ragsam.retrieval.bank_build.build_bank (corpus slices, pre-trained embedder)
    sam2         ragsam.pretrain.sam2       (tiny SAM 2 from random, retrieval episodes)

Output folder (what ``ragsam/resources/tiny_models`` ships)::

    sam/        Hugging Face SAM folder      -> model.weights=<out>/sam, model.arch=tiny
    sam2/       Hugging Face SAM 2 folder    -> build_sam2("<out>/sam2")
    embedder/   Hugging Face DINOv2 folder   -> build_embedder("<out>/embedder", image_size=56)
    manifest.json   settings, SHA-256 of every file, per-stage statistics and CPU seconds

The corpus, slice cache, training run and bank are scratch (a temporary folder). The
output folder is built next to ``out`` and moved into place when complete. Everything is
seeded: the same settings, library versions and thread count give the same weights.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ragsam.pretrain.settings import PretrainSettings
from ragsam.utils.atomic import atomic_dir, check_writable, write_json

MANIFEST = "manifest.json"
MODEL_FOLDERS = ("sam", "sam2", "embedder")


def file_digests(root: Path) -> dict[str, str]:
    """``relative path -> SHA-256`` of every file under the model folders of ``root``."""
    out = {}
    for folder in MODEL_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class StageClock:
    """CPU seconds per stage (``time.process_time``), announced through ``on_stage``."""

    def __init__(self, on_stage: Callable[[str], None] | None = None) -> None:
        self.on_stage = on_stage
        self.cpu: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.on_stage is not None:
            self.on_stage(name)
        t0 = time.process_time()
        result = fn()
        self.cpu[name] = round(time.process_time() - t0, 1)
        return result


def build_corpus(settings: PretrainSettings, work: Path, clock: StageClock) -> None:
    """Stages ``corpus`` and ``prepare``: ``work/corpus`` and its slice cache ``work/prepared``."""
    from ragsam.data.phantom_corpus import write_phantom_corpus
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings

    clock.run("corpus", lambda: write_phantom_corpus(work / "corpus", settings.corpus_cases, settings.corpus_seed))
    clock.run("prepare", lambda: prepare_dataset(work / "corpus", work / "prepared",
                                                 PrepareOptions(settings=SliceSettings(size=settings.size),
                                                 label_map="btcv", split="none")))


def sam_stage(settings: PretrainSettings, work: Path, out: Path, clock: StageClock) -> dict[str, Any]:
    """Stage ``sam``: the tiny SAM -> ``out/sam``; its statistics."""
    from ragsam.pretrain.tiny_sam import pretrain_sam

    return {"sam": clock.run("sam", lambda: pretrain_sam(settings, work / "prepared", work / "sam-run", out / "sam"))}


def retrieval_stages(settings: PretrainSettings, work: Path, out: Path, clock: StageClock) -> dict[str, Any]:
    """Stages ``embedder``, ``bank`` and ``sam2`` -> ``out/embedder``, ``out/sam2``; their statistics."""
    from ragsam.pretrain.corpus_slices import load_corpus_slices
    from ragsam.pretrain.embedder import pretrain_embedder
    from ragsam.pretrain.sam2 import pretrain_sam2
    from ragsam.retrieval.bank_build import BankOptions, build_bank

    corpus = load_corpus_slices(work / "prepared")
    stats: dict[str, Any] = {"corpus": {"cases": settings.corpus_cases, "slices": len(corpus.images)}}
    stats["embedder"] = clock.run("embedder", lambda: pretrain_embedder(settings, corpus, out / "embedder"))
    write_json(out / "embedder" / "ragsam.json", {"image_size": settings.embedder_image_size, "pooling": "cls"})
    clock.run("bank", lambda: build_bank(work / "prepared", work / "bank",
                                         BankOptions(embedder_weights=str(out / "embedder"),
                                         image_size=settings.embedder_image_size, device="cpu")))
    stats["sam2"] = clock.run("sam2", lambda: pretrain_sam2(settings, corpus, work / "bank", out / "sam2"))
    return stats


def write_manifest(out: Path, settings: PretrainSettings, stats: dict[str, Any], cpu: dict[str, float],
                   wall_seconds: float) -> dict[str, Any]:
    """Write ``out/manifest.json`` (settings, file digests, statistics, CPU seconds, versions); return it."""
    manifest = {
        "format": "ragsam-tiny-models", "version": 1,
        "command": "ragsam pretrain-tiny --out DIR" + ("" if settings == PretrainSettings() else " (custom settings)"),
        "settings": asdict(settings),
        "what": "tiny SAM, SAM 2 and DINOv2-architecture slice embedder pre-trained by ragsam on synthetic "
                "phantoms only (never on CT, never on the demo's cases)",
        "files": file_digests(out),
        "stats": stats,
        "cpu_seconds": cpu,
        "wall_seconds": round(wall_seconds, 1),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "python": platform.python_version()},
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def pretrain_tiny(out_dir: str | os.PathLike, settings: PretrainSettings, force: bool = False,
                  on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every stage (module docstring) and write ``out_dir``; returns the manifest.

    The SAM stage and the retrieval stages (embedder -> bank -> SAM 2) are independent
    (each seeds its own generators), so their order does not change the weights.

    Raises:
        OutputExistsError: ``out_dir`` exists and ``force`` is false (checked before any work).
    """
    out = Path(out_dir)
    check_writable(out, force)
    clock = StageClock(on_stage)
    wall0 = time.perf_counter()
    with atomic_dir(out, force=force) as tmp, tempfile.TemporaryDirectory(prefix="ragsam-pretrain-") as scratch:
        work = Path(scratch)
        build_corpus(settings, work, clock)
        stats = {**sam_stage(settings, work, tmp, clock), **retrieval_stages(settings, work, tmp, clock)}
        manifest = write_manifest(tmp, settings, stats, clock.cpu, time.perf_counter() - wall0)
    return manifest


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)

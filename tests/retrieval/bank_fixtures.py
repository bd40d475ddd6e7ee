"""Hand-written prepared slice caches (the docs/architecture.md format) for the bank tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

MANIFEST = ("case_id", "z", "rel_z", "organs", "orig_x", "orig_y", "orig_z",
            "spacing_x", "spacing_y", "spacing_z", "split")


def write_prepared(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray | None]],
                   splits: dict[str, str] | None = None, window=(-125.0, 275.0)) -> Path:
    """Write ``cases`` (id -> (images float (Z,S,S) in [0,1], labels uint8 (Z,S,S) or None)) as a cache."""
    root.mkdir(parents=True, exist_ok=True)
    splits = splits or {}
    size = next(iter(cases.values()))[0].shape[-1]
    rows = []
    for cid, (images, labels) in sorted(cases.items()):
        folder = root / "cases" / cid
        folder.mkdir(parents=True)
        np.save(folder / "image.npy", images.astype(np.float16))
        if labels is not None:
            np.save(folder / "label.npy", labels.astype(np.uint8))
        depth = len(images)
        for z in range(depth):
            organs = "" if labels is None else ";".join(str(o) for o in np.unique(labels[z]) if o)
            rows.append([cid, z, z / (depth - 1) if depth > 1 else 0.0, organs, size, size, depth,
                         1.0, 1.0, 3.0, splits.get(cid, "train")])
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST)
        writer.writerows(rows)
    from ragsam.data.label_maps import load_label_map

    labels_map = {str(k): v for k, v in load_label_map("btcv").labels.items()}  # every BTCV id, 0 included
    meta = {"format": "ragsam-slice-cache", "version": 1, "complete": True,
            "label_map": {"name": "btcv", "labels": labels_map},
            "settings": {"window": list(window), "size": int(size), "context": 0},
            "cases": {cid: {"key": f"key-{cid}"} for cid in cases}}
    (root / "prepare.json").write_text(json.dumps(meta), encoding="utf-8")
    (root / "label_map.json").write_text(json.dumps({"name": "btcv", "labels": labels_map}), encoding="utf-8")
    (root / "splits.json").write_text(json.dumps({"train": sorted(c for c in cases if splits.get(c, "train") == "train"),
                                                  "test": sorted(c for c in cases if splits.get(c) == "test")}))
    return root


def synthetic_cases(n_cases: int = 3, depth: int = 6, size: int = 32, seed: int = 0
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random-texture cases; organ 1 in slices z >= 2, organ 6 in z <= 3 (so z 2..3 hold both)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n_cases):
        images = rng.random((depth, size, size)).astype(np.float16).astype(np.float32)
        labels = np.zeros((depth, size, size), np.uint8)
        labels[2:, 4:10, 4:10] = 1
        labels[:4, 20:28, 18:30] = 6
        out[f"case{i}"] = (images, labels)
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length, float32 (what the indexes store)."""
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tiny_ct_bank(ct3mm: dict[str, Path], root: Path) -> Path:
    """A tiny-embedder bank (28 px, seeded) over the shared 3 mm case cut into 32-pixel slices
    (BTCV label map): the bank of the segment / output-format / PACS command tests."""
    import torch

    from ragsam.data.slices import SliceSettings, volume_to_slices
    from ragsam.data.volume import read_image, read_labels
    from ragsam.retrieval.bank import BankOptions, build_bank

    image = read_image(ct3mm["image"])
    stack = volume_to_slices(image, read_labels(ct3mm["labels"], reference=image), SliceSettings(size=32))
    prepared = write_prepared(root / "prepared", {"ct3mm": (stack.images, stack.labels)})
    torch.manual_seed(0)
    build_bank(prepared, root / "bank", BankOptions(embedder_weights="tiny", image_size=28))
    return root / "bank"

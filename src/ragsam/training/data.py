"""Training and validation slices from a prepared cache (``ragsam prepare`` output).

``data.train`` / ``data.val`` list split names of ``splits.json`` (``train``,
``test``, ``fold0`` ...) and/or case ids. ``data.holdout`` moves slices of the
training cases into validation (for datasets too small to hold out a case):
``every:N`` takes slices with ``z % N == N // 2``, ``z:A-B`` the range A..B.
Label ids in the selected slices must have a model output channel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragsam.data.cache_meta import CacheMeta
from ragsam.data.slice_dataset import SliceDataset
from ragsam.data.splits import Splits
from ragsam.errors import InputError
from ragsam.training.config import TrainConfig


@dataclass
class TrainData:
    """Datasets and index sets of one run.

    Attributes:
        dataset: every selected slice (training and validation cases).
        train_indices: dataset indices trained on.
        val_cases: ``{case_id: dataset indices in z order}`` (empty = no validation).
        meta: the cache's ``prepare.json``.
    """

    dataset: SliceDataset
    train_indices: list[int]
    val_cases: dict[str, list[int]]
    meta: CacheMeta


def resolve_cases(entries: list[str], splits: Splits, known: list[str], prepared: Path,
                  key: str) -> list[str]:
    """Expand split names to case ids; unknown names or ids are an InputError."""
    out: list[str] = []
    for entry in entries:
        if entry in splits.named:
            out.extend(str(c) for c in splits.named[entry])
        elif entry in known:
            out.append(entry)
        else:
            names = splits.names()
            raise InputError(prepared, f"data.{key}: {entry!r} is neither a split ({', '.join(names)}) "
                             f"nor a case id of the cache")
    missing = [c for c in out if c not in known]
    if missing:
        raise InputError(prepared, f"data.{key}: cases {missing[:5]} of splits.json are not in the manifest")
    return list(dict.fromkeys(out))


def holdout_rule(spec: str) -> Any:
    """``z -> bool`` (held out?) for ``""``, ``every:N`` or ``z:A-B``."""
    if not spec:
        return lambda z: False
    m = re.fullmatch(r"every:(\d+)", spec.strip())
    if m and int(m.group(1)) >= 2:
        n = int(m.group(1))
        return lambda z: z % n == n // 2
    m = re.fullmatch(r"z:(\d+)-(\d+)", spec.strip())
    if m and int(m.group(1)) <= int(m.group(2)):
        lo, hi = int(m.group(1)), int(m.group(2))
        return lambda z: lo <= z <= hi
    raise InputError(None, f"data.holdout={spec!r}: use '', 'every:N' (N >= 2) or 'z:A-B'")


def build_data(cfg: TrainConfig) -> TrainData:
    """Open the cache, select slices, check label ids; fills ``cfg.data.window/size``.

    Raises:
        InputError: no cache, unknown splits/cases, overlapping train/val cases, no
            training slices, context/size mismatches, or label ids >= the model's outputs.
    """
    d = cfg.data
    if not d.prepared:
        raise InputError(None, "no prepared slice cache given (data.prepared=... or --prepared DIR)")
    prepared = Path(d.prepared)
    meta = CacheMeta.read(prepared)
    settings = meta.settings
    size = d.size if d.size is not None else cfg.model.image_size
    if size != cfg.model.image_size:
        raise InputError(prepared, f"data.size={size} differs from model.image_size={cfg.model.image_size}")
    d.size = size
    d.window = [float(v) for v in settings.get("window", (-125.0, 275.0))]
    splits = Splits.read(prepared)
    probe = SliceDataset(prepared)
    known = probe.case_ids
    train_ids = resolve_cases(d.train, splits, known, prepared, "train")
    val_ids = resolve_cases(d.val, splits, known, prepared, "val")
    overlap = sorted(set(train_ids) & set(val_ids))
    if overlap:
        raise InputError(prepared, f"cases {overlap[:5]} are in both data.train and data.val")
    dataset = SliceDataset(prepared, train_ids + val_ids, context=d.context,
                           size=None if size == probe.slice_size else size, channels=3)
    held = holdout_rule(d.holdout)
    train_idx: list[int] = []
    val_cases: dict[str, list[int]] = {}
    train_set, val_set = set(train_ids), set(val_ids)
    for i, rec in enumerate(dataset.records):
        if rec.case_id in val_set:
            val_cases.setdefault(rec.case_id, []).append(i)
        elif rec.case_id in train_set and held(rec.z):
            val_cases.setdefault(f"{rec.case_id}:holdout", []).append(i)
        elif rec.case_id in train_set:
            train_idx.append(i)
    if not train_idx:
        raise InputError(prepared, f"no training slices selected (data.train={d.train}, holdout={d.holdout!r})")
    ids = sorted({o for rec in dataset.records for o in rec.organs})
    too_big = [i for i in ids if i > cfg.model.num_classes]
    if too_big:
        raise InputError(prepared, f"label ids {too_big} exceed model.num_classes={cfg.model.num_classes} "
                         f"(outputs 0..{cfg.model.num_classes}); set model.num_classes={max(ids)} or remap labels")
    return TrainData(dataset, train_idx, {k: sorted(v, key=lambda j: dataset.records[j].z)
                                          for k, v in val_cases.items()}, meta)

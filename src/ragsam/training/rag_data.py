"""Episodes for ``ragsam train-rag``: a query slice, its ``k`` retrieved supports, the query's labels.

Every slice of the selected cases (training and validation) gets its supports
once, at the start of a run, with :func:`ragsam.retrieval.support_retrieval.retrieve_supports`
-- the retrieval ``ragsam segment`` runs, with the query's own case excluded and
the same relative-z prior -- so an episode conditions SAM 2 exactly as inference
will. The embedder is frozen, so the neighbours do not change during training.

An item of :class:`EpisodeDataset` is ``{"image": float32 (1 + k, S, S) in [0, 1],
"label": int64 (1 + k, S, S)}``: row 0 is the query, rows ``1..k`` the supports in
frame order (best neighbour last). This is the shape the shared
:class:`~ragsam.training.sampler.BatchStream` collates into ``(B, 1 + k, S, S)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ragsam.errors import InputError
from ragsam.retrieval.bank_build import case_arrays
from ragsam.training.data import holdout_rule, resolve_cases
from ragsam.training.rag_config import RagTrainConfig


@dataclass(frozen=True)
class Episode:
    """One query slice and its supports (``(case_id, z)`` in the bank's cache, frame order)."""

    case_id: str
    z: int
    supports: tuple[tuple[str, int], ...]
    support_rows: tuple[int, ...]


class EpisodeDataset(Dataset):
    """Query slices of ``query_dir`` with supports read from ``support_dir`` (both memory-mapped)."""

    def __init__(self, query_dir: Path, support_dir: Path, episodes: list[Episode]) -> None:
        self.query_dir, self.support_dir, self.episodes = Path(query_dir), Path(support_dir), episodes
        self._arrays: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.episodes)

    def _slice(self, root: Path, which: str, case_id: str, z: int) -> tuple[np.ndarray, np.ndarray]:
        key = (which, case_id)
        if key not in self._arrays:
            self._arrays[key] = case_arrays(root, case_id, with_labels=True)
        image, label = self._arrays[key]
        assert label is not None
        return np.asarray(image[z], dtype=np.float32), np.asarray(label[z], dtype=np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep = self.episodes[index]
        rows = [self._slice(self.query_dir, "query", ep.case_id, ep.z)]
        rows += [self._slice(self.support_dir, "support", cid, z) for cid, z in ep.supports]
        return {"image": torch.from_numpy(np.stack([r[0] for r in rows])),
                "label": torch.from_numpy(np.stack([r[1] for r in rows])), "case_id": ep.case_id, "z": ep.z}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the memory maps
        return {**self.__dict__, "_arrays": {}}


@dataclass
class EpisodeData:
    """The episodes of one run.

    Attributes:
        dataset: one episode per selected slice (training and validation cases).
        train_indices: dataset indices trained on.
        val_cases: ``{case_id: dataset indices in z order}`` (whole cases, or ``<case>:holdout``).
        bank: the loaded support bank. num_classes: K.
    """

    dataset: EpisodeDataset
    train_indices: list[int]
    val_cases: dict[str, list[int]]
    bank: Any
    num_classes: int


def _num_classes(cfg: RagTrainConfig, meta: Any, organs: set[int], source: Path) -> int:
    k = cfg.model.num_classes or max([int(i) for i in meta.label_names] + list(organs) + [1])
    if organs and max(organs) > k:
        raise InputError(source, f"label ids {sorted(o for o in organs if o > k)} exceed model.num_classes={k}")
    return k


def build_episodes(cfg: RagTrainConfig, device: str = "cpu") -> EpisodeData:
    """Open the bank and the query cache, select cases, retrieve every slice's supports.

    Fills ``cfg.model.num_classes`` when unset.

    Raises:
        InputError: no bank, unknown cases, train/val overlap, caches of different slice
            sizes or windows, no training slices, too few supports outside a query's case.
    """
    from ragsam.data.cache_meta import CacheMeta
    from ragsam.data.slice_dataset import read_manifest
    from ragsam.data.splits import Splits
    from ragsam.retrieval.bank import SupportBank
    from ragsam.retrieval.support_retrieval import retrieve_supports

    d = cfg.data
    if not d.bank:
        raise InputError(None, "no support bank given (data.bank=... or --bank DIR; build one with `ragsam index build`)")
    bank = SupportBank.load(d.bank)
    prepared = Path(d.prepared) if d.prepared else bank.prepared_dir
    meta, bank_meta = CacheMeta.read(prepared), bank.prepare_meta()
    mine, theirs = meta.slice_settings, bank_meta.slice_settings
    for key in ("size", "window"):
        if getattr(mine, key) != getattr(theirs, key):
            raise InputError(prepared, f"slice {key} {getattr(mine, key)} differs from the bank's cache "
                                       f"({getattr(theirs, key)})")
    records = read_manifest(prepared)
    known = list(dict.fromkeys(r.case_id for r in records))
    splits = Splits.read(prepared)
    train_ids = resolve_cases(d.train, splits, known, prepared, "train")
    val_ids = resolve_cases(d.val, splits, known, prepared, "val")
    overlap = sorted(set(train_ids) & set(val_ids))
    if overlap:
        raise InputError(prepared, f"cases {overlap[:5]} are in both data.train and data.val")
    cfg.model.num_classes = _num_classes(cfg, meta, {o for r in records if r.case_id in set(train_ids + val_ids)
                                                     for o in r.organs}, prepared)
    embedder = bank.embedder(device=device)
    held = holdout_rule(d.holdout)
    episodes: list[Episode] = []
    train_idx: list[int] = []
    val_cases: dict[str, list[int]] = {}
    for case_id in train_ids + val_ids:
        images, labels = case_arrays(prepared, case_id, with_labels=True)
        if labels is None:
            raise InputError(prepared, f"case {case_id!r} has no labels; it cannot be trained or validated on")
        hits = retrieve_supports(bank, embedder, np.asarray(images, dtype=np.float32), d.k, {case_id}, d.z_prior)
        for z, nbs in enumerate(hits):
            if case_id in val_ids:
                val_cases.setdefault(case_id, []).append(len(episodes))
            elif held(z):
                val_cases.setdefault(f"{case_id}:holdout", []).append(len(episodes))
            else:
                train_idx.append(len(episodes))
            episodes.append(Episode(case_id, z, tuple((nb.case_id, nb.z) for nb in nbs),
                                    tuple(nb.row for nb in nbs)))
    if not train_idx:
        raise InputError(prepared, f"no training slices selected (data.train={d.train}, holdout={d.holdout!r})")
    return EpisodeData(EpisodeDataset(prepared, bank.prepared_dir, episodes), train_idx, val_cases, bank,
                       int(cfg.model.num_classes))

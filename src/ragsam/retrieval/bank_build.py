"""Build a support bank: embed every slice of the labelled cases of a prepared cache.

The bank is a folder, written atomically as a whole (``ragsam.utils.atomic.atomic_dir``)::

    bank/
      index.faiss     Faiss inner-product index; id i = row i of metadata.csv
      metadata.csv    row,case_id,z,rel_z,organs,split   (organs: ;-joined label ids present in the slice)
      embedder.json   the embedder identity (weights hash, pooling, input size, dim)
      bank.json       prepared cache path + prepare.json hash, index kind/settings, counts
      embeddings.npy  float32 (n, D) unit vectors, row i = index id i (memory-mapped when read)

Every slice of every labelled case is embedded, including slices without any
organ: they are legitimate neighbours for a query slice above or below the
abdomen, and queries can require organs (``SupportBank.query(require_organs=...)``).
Organs per slice are computed from ``label.npy`` itself (the source of truth).

Under ``torchrun --nproc_per_node N`` the slices are embedded in chunks of ``batch_size``
(the one-process forward passes) sharded by rank; the embeddings are gathered in bank
order and rank 0 builds, writes and publishes the bank (byte-identical index and
metadata to one process); every rank returns once it is published.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ragsam.data.cache_meta import CacheMeta
from ragsam.errors import InputError
from ragsam.retrieval.bank_info import BankInfo
from ragsam.utils import ranks
from ragsam.utils.atomic import atomic_dir, check_writable, remove_stale_temporaries, write_json, write_text
from ragsam.utils.fault_points import pause_at
from ragsam.utils.locking import folder_lock
from ragsam.utils.paths import resolve_inside
from ragsam.utils.threads import apply_threads

METADATA_COLUMNS = ("row", "case_id", "z", "rel_z", "organs", "split")
EMBEDDINGS_FILE = "embeddings.npy"  # the one name; read by ragsam.retrieval.bank.open_embeddings


@dataclass(frozen=True)
class BankSummary:
    """What :func:`build_bank` wrote."""

    path: Path
    count: int          # slices (= index rows)
    cases: int
    dim: int
    kind: str           # resolved index kind
    embedder: str       # embedder weights label
    seconds: float      # wall time of the whole build


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (used to notice a prepared cache rebuilt under a bank)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def case_arrays(prepared_dir: Path, case_id: str, with_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Memory maps of ``cases/<id>/image.npy`` (float16 (Z, S, S)) and ``label.npy`` (uint8 (Z, S, S)).

    Raises:
        InputError: a path escaping the cache, or unreadable arrays.
    """
    folder = resolve_inside(prepared_dir, Path("cases") / case_id, prepared_dir / "manifest.csv")
    if not (folder / "image.npy").is_file():
        raise InputError(prepared_dir, f"case {case_id!r} is not in the prepared cache")
    try:
        image = np.load(folder / "image.npy", mmap_mode="r", allow_pickle=False)
        label = np.load(folder / "label.npy", mmap_mode="r", allow_pickle=False) if with_labels else None
    except (OSError, ValueError) as exc:
        raise InputError(folder, f"unreadable cached slices ({str(exc)[:160]}); rerun `ragsam prepare`") from None
    if image.ndim != 3 or (label is not None and label.shape != image.shape):
        raise InputError(folder, f"cached arrays have shapes {image.shape} and "
                                 f"{None if label is None else label.shape}; expected equal (Z, S, S)")
    return image, label


def slice_organs(label: np.ndarray) -> list[tuple[int, ...]]:
    """Sorted non-zero label ids present in each slice of ``label (Z, S, S)``."""
    out = []
    for z in range(label.shape[0]):
        counts = np.bincount(np.asarray(label[z]).ravel(), minlength=1)
        out.append(tuple(int(i) for i in np.flatnonzero(counts[1:]) + 1))
    return out


def _select_cases(prepared: Path, records: list, labelled_only: bool, split: str | None,
                  cases: Sequence[str] | None) -> list[str]:
    ordered = list(dict.fromkeys(r.case_id for r in records))
    if split is not None:
        in_split = {r.case_id for r in records if r.split == split}
        if not in_split:
            found = sorted({r.split for r in records})
            raise InputError(prepared, f"no case has split {split!r} (splits in the cache: {', '.join(found)})")
        ordered = [c for c in ordered if c in in_split]
    if cases is not None:
        unknown = [c for c in cases if c not in set(ordered)]
        if unknown:
            raise InputError(prepared, f"case ids {unknown[:5]!r} are not in the cache"
                                       + (f" split {split!r}" if split else ""))
        ordered = [c for c in ordered if c in set(cases)]
    if labelled_only:
        ordered = [c for c in ordered if (prepared / "cases" / c / "label.npy").is_file()]
        if not ordered:
            raise InputError(prepared, "the prepared cache has no labelled cases"
                                       + (f" in split {split!r}" if split else "") + "; a support bank needs labels")
    return ordered


def _metadata_rows(chosen: Sequence[str], arrays: dict[str, tuple[np.ndarray, np.ndarray | None]],
                   records: list) -> list[tuple]:
    """One ``METADATA_COLUMNS`` row per slice, in bank order (cases in order, z ascending):
    ``(i, case_id, z, rel_z, organs ";"-joined, split)``; ``rel_z`` and ``split`` from the
    manifest ``records`` (missing rows: ``z / (Z - 1)`` and "")."""
    by_case: dict[str, dict[int, Any]] = {}
    for r in records:
        by_case.setdefault(r.case_id, {})[r.z] = r
    rows: list[tuple] = []
    for case_id in chosen:
        image, label = arrays[case_id]
        depth = image.shape[0]
        organs = slice_organs(label) if label is not None else [()] * depth
        for z in range(depth):
            rec = by_case[case_id].get(z)
            rel_z = float(rec.rel_z) if rec is not None else (z / (depth - 1) if depth > 1 else 0.0)
            rows.append((len(rows), case_id, z, rel_z, ";".join(map(str, organs[z])),
                         rec.split if rec is not None else ""))
    return rows


def _embed_chunks(embedder: Any, arrays: dict[str, tuple[np.ndarray, np.ndarray | None]],
                  chunks: list[tuple[str, int]], batch_size: int,
                  progress: Callable[[int, int], None] | None) -> np.ndarray:
    """Embeddings float32 (slices, D) of every chunk ``(case_id, first z)`` of ``batch_size``
    slices, in chunk order. Under torchrun the chunks are sharded by rank
    (:func:`ragsam.utils.ranks.gather_results`): each chunk is the same forward pass as in
    one process, so the gathered vectors are identical to a one-process build."""
    def embed(mine: list[tuple[str, int]]) -> list[np.ndarray]:
        total = sum(len(arrays[c][0][first:first + batch_size]) for c, first in mine)
        out, done = [], 0
        for case_id, first in mine:
            batch = np.asarray(arrays[case_id][0][first:first + batch_size], dtype=np.float32)
            out.append(np.asarray(embedder.embed(batch, batch_size=batch_size), dtype=np.float32))
            done += len(batch)
            if progress is not None:
                progress(done, total)
        return out

    parts = ranks.gather_results(embed, chunks)
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, embedder.dim), np.float32)


@ranks.fail_together  # torchrun: a rank's failure, wherever it happens, fails every rank
@dataclass(frozen=True)
class BankOptions:
    """What bank :func:`build_bank` builds (settings; the folders and the run's hooks are per call).

    Attributes:
        embedder_weights: see :func:`ragsam.retrieval.embedder.build_embedder`.
        kind: Faiss index kind (``auto``, ``flat``, ``ivf``, ``ivfpq``, ``hnsw``; ``ivfpq`` banks
            re-rank a shortlist from ``embeddings.npy``, see :mod:`ragsam.retrieval.bank`).
        pooling: ``cls`` or ``mean``.
        labelled_only: only cases with ``label.npy`` (otherwise unlabelled cases are
            embedded too; they can be retrieved but not used as supports).
        batch_size: slices per embedder forward pass.
        image_size: embedder input side in pixels.
        split: only cases of this manifest split (e.g. ``"train"``, so test cases never
            serve as supports); ``None`` = all cases.
        cases: only these case ids.
        device: where the embedder runs (``None``: its default).
        nprobe, ef_search: IVF / HNSW search settings stored with the index.
        refine: ``ivfpq`` only: shortlist ``refine x k`` rows per query, re-ranked exactly
            (default :data:`~ragsam.retrieval.faiss_index.PQ_REFINE`); refused for other kinds.
    """

    embedder_weights: str = "facebook/dinov2-small"
    kind: str = "auto"
    pooling: str = "cls"
    labelled_only: bool = True
    batch_size: int = 32
    image_size: int = 224
    split: str | None = None
    cases: Sequence[str] | None = None
    device: str | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    refine: int | None = None


def build_bank(prepared_dir: str | os.PathLike, out_dir: str | os.PathLike, options: BankOptions = BankOptions(),
               force: bool = False, *, embedder=None,
               progress: Callable[[int, int], None] | None = None) -> BankSummary:
    """Embed the slices of a prepared cache and save a support bank folder.

    Args:
        prepared_dir: folder written by ``ragsam prepare``.
        out_dir: the bank folder to create (replaced only with ``force``).
        options: the bank's settings (:class:`BankOptions`).
        force: replace an existing bank.
        embedder: a ready :class:`SliceEmbedder` (overrides ``embedder_weights``/``pooling``/``image_size``).
        progress: called as ``progress(done_slices, total_slices)``.
    Raises:
        InputError: not a prepared cache, no labelled cases, bad settings.
        OutputExistsError: ``out_dir`` exists and ``force`` is false.
    """
    from ragsam.data.slice_dataset import read_manifest
    from ragsam.retrieval.embedder import build_embedder
    from ragsam.retrieval.faiss_index import build_index, save_index

    o = options
    start = time.perf_counter()
    prepared = Path(prepared_dir).resolve()
    out = Path(out_dir)
    _check_request(prepared, out, o.kind, o.refine)
    here = ranks.current()
    # torchrun: rank 0 holds the bank's lock and writes the bank; every rank embeds its share.
    with folder_lock(out) if here.is_main else contextlib.nullcontext():
        if here.is_main:
            remove_stale_temporaries(out)  # left by a killed build
        check_writable(out, force)
        meta = CacheMeta.read(prepared)
        records = read_manifest(prepared)
        chosen = _select_cases(prepared, records, o.labelled_only, o.split, o.cases)
        if not chosen:
            raise InputError(prepared, "no cases to embed")
        if embedder is None:
            embedder = build_embedder(o.embedder_weights, pooling=o.pooling, image_size=o.image_size, device=o.device,
                                      batch_size=o.batch_size)
        apply_threads(getattr(embedder, "model", None))
        arrays = {c: case_arrays(prepared, c, with_labels=(prepared / "cases" / c / "label.npy").is_file())
                  for c in chosen}
        rows = _metadata_rows(chosen, arrays, records)
        chunks = [(c, first) for c in chosen for first in range(0, arrays[c][0].shape[0], o.batch_size)]
        vectors = _embed_chunks(embedder, arrays, chunks, o.batch_size, progress)

        def write() -> str:
            extra = {} if o.refine is None else {"refine": o.refine}
            index, index_settings = build_index(vectors, o.kind, nprobe=o.nprobe, ef_search=o.ef_search, **extra)
            identity = embedder.identity
            info = BankInfo(
                prepared_dir=str(prepared), prepared_dir_relative=os.path.relpath(prepared, out.resolve()),
                prepare_sha256=file_sha256(prepared / "prepare.json"),
                case_keys={c: meta.cases[c].key for c in chosen if c in meta.cases and meta.cases[c].key},
                slice_size=int(meta.settings.get("size", arrays[chosen[0]][0].shape[-1])),
                kind=index_settings["kind"], dim=embedder.dim, count=len(rows),
                cases=chosen, case_depths={c: int(arrays[c][0].shape[0]) for c in chosen},
                labelled_cases=[c for c in chosen if arrays[c][1] is not None],
                settings={"labelled_only": o.labelled_only, "split": o.split, "batch_size": o.batch_size,
                          "pooling": identity["pooling"], "image_size": identity["image_size"],
                          "index": index_settings},
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            with atomic_dir(out, force=force) as tmp:
                save_index(index, tmp / "index.faiss", force=True)
                np.save(tmp / EMBEDDINGS_FILE, vectors)
                write_text(tmp / "metadata.csv", _metadata_csv(rows))
                write_json(tmp / "embedder.json", identity)
                info.write(tmp)
                pause_at("index-build:before-publish")
            return str(index_settings["kind"])

        resolved_kind = ranks.from_main(write)  # every rank returns once the bank is published
        return BankSummary(path=out, count=len(rows), cases=len(chosen), dim=embedder.dim,
                           kind=resolved_kind, embedder=embedder.identity["weights"],
                           seconds=time.perf_counter() - start)


def _check_request(prepared: Path, out: Path, kind: str, refine: int | None = None) -> None:
    """Refuse an unknown index kind, a re-ranking setting for a kind that does not re-rank, and a
    bank inside the prepared cache (before the lock is taken)."""
    from ragsam.retrieval.faiss_index import INDEX_KINDS, check_refine

    if kind not in INDEX_KINDS:
        raise InputError(None, f"index kind {kind!r} is not one of {', '.join(INDEX_KINDS)}")
    if refine is not None and kind != "ivfpq":
        raise InputError(None, f"refine applies to --kind ivfpq only (got kind {kind!r})")
    if refine is not None:
        check_refine(refine)
    if out.resolve() == prepared or prepared in out.resolve().parents:
        raise InputError(out, "the bank must not be written inside the prepared cache")


def _metadata_csv(rows: list[tuple]) -> str:
    """The text of ``metadata.csv`` (:data:`METADATA_COLUMNS`; ``rel_z`` written with ``repr``)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(METADATA_COLUMNS)
    writer.writerows((r[0], r[1], r[2], repr(r[3]), r[4], r[5]) for r in rows)
    return text.getvalue()

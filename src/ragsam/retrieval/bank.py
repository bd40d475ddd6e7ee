"""The support bank: retrieve labelled slices similar to a query slice.

Typical use (what ``ragsam segment`` does per query slice)::

    bank = SupportBank.load("banks/btcv")
    embedder = bank.embedder()                       # rebuilt from the bank's identity
    vectors = embedder.embed(query_slices)           # (Q, D) unit vectors
    hits = bank.query(vectors, k=4, embedder_identity=embedder.identity,
                      exclude_cases={"img0001"}, z_prior=0.5, query_rel_z=[0.42, ...])
    images, labels = bank.support_slices(hits[0])    # (4, S, S) float32, (4, S, S) uint8

Filtering (excluded cases, required organs) is done by over-fetching from
Faiss and dropping ineligible rows: the first (batched) search asks for
``k + (number of ineligible rows)`` (``max(8k, 64)`` instead of ``k`` with a
z prior), which for an exact (flat) index always leaves at least ``k``
eligible ones. With a relative-z prior the ranking score
is ``cosine - z_prior * |rel_z_query - rel_z_support|``; the search is widened
(doubling) until the lowest cosine fetched is no higher than the k-th best
ranking score, so no unfetched slice can outrank the result: the re-ranking is
exact for a flat index. Approximate indexes (IVF, HNSW) that run out of
candidates fall back to exact scoring of the eligible rows' stored vectors:
``embeddings.npy`` (float32 ``(n, D)``, row i = index id i), memory-mapped, so a bank
larger than memory is not loaded whole; banks built before it existed have no such
file and use the index's own vectors (:func:`ragsam.retrieval.faiss_index.reconstruct_all`).

Every search of the index goes through :meth:`SupportBank._search`. An IVF-PQ bank
(approximate PQ scores) re-ranks there: a shortlist of ``refine x fetch`` rows
(``refine`` from the index settings, default
:data:`ragsam.retrieval.faiss_index.PQ_REFINE`, overridable in :meth:`SupportBank.load`)
is re-scored with the exact vectors of the memory-mapped ``embeddings.npy`` (only those
rows are read), so scores are exact cosines and the ranking is exact whenever the true
neighbours are in the shortlist. An IVF-PQ bank without ``embeddings.npy`` cannot re-rank
and returns the PQ ranking. Flat, IVF and HNSW banks search as they are.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragsam.data.cache_meta import CacheMeta
from ragsam.errors import InputError
from ragsam.retrieval.bank_build import (  # noqa: F401  (re-exported API)
    EMBEDDINGS_FILE,
    METADATA_COLUMNS,
    BankOptions,
    BankSummary,
    build_bank,
    case_arrays,
    file_sha256,
)
from ragsam.retrieval.bank_info import BankInfo
from ragsam.retrieval.faiss_index import (
    PQ_REFINE,
    check_refine,
    check_unit_vectors,
    load_index,
    reconstruct_all,
    search,
    set_search_params,
)

ADDITIONS_DIR = "additions"  # slices added after the build (ragsam.retrieval.bank_edit), in cache layout


@dataclass(frozen=True)
class Neighbour:
    """One retrieved support slice.

    Attributes:
        case_id, z: the slice in the prepared cache (canonical z index).
        rel_z: its relative z position in [0, 1].
        score: ranking score (cosine minus the z-prior penalty, if any).
        organs: label ids present in the slice.
        row: index row in the bank.
        similarity: plain cosine similarity to the query.
    """

    case_id: str
    z: int
    rel_z: float
    score: float
    organs: tuple[int, ...]
    row: int
    similarity: float


def _check_slices_exist(metadata: Path, case_ids: list[str], zs: list[int], prepared: Path | None,
                        added: dict[str, Path]) -> None:
    """Every (case, z) of the bank must be a slice of its source (``.npy`` headers only).

    ``added`` maps the ids of slices added after the build to the bank folder that holds
    them in cache layout (:data:`ADDITIONS_DIR`); every other case comes from ``prepared``.
    """
    top: dict[str, int] = {}
    for cid, z in zip(case_ids, zs, strict=True):
        if z < 0:
            raise InputError(metadata, f"case {cid!r} has a row with z={z} < 0")
        top[cid] = max(top.get(cid, -1), z)
    for cid, z in top.items():
        root = added.get(cid, prepared)
        if root is None or not (root / "cases").is_dir():
            continue  # the cache is not here (moved): checked when a support slice is read
        image = root / "cases" / cid / "image.npy"
        try:
            depth = np.load(image, mmap_mode="r", allow_pickle=False).shape[0]
        except FileNotFoundError:
            raise InputError(metadata, f"case {cid!r} is not in the prepared cache {root}") from None
        except (OSError, ValueError) as exc:
            raise InputError(image, f"not a readable array ({exc})") from None
        if z >= depth:
            raise InputError(metadata, f"case {cid!r} row z={z} is outside the {depth} slices of {image}")


def open_embeddings(path: Path, count: int, dim: int) -> np.ndarray | None:
    """``path/embeddings.npy`` memory-mapped read-only (float32 ``(count, dim)``), or ``None``
    for a bank without one.

    Raises:
        InputError: unreadable, or not float32 ``(count, dim)``.
    """
    file = path / EMBEDDINGS_FILE
    if not file.is_file():
        return None
    try:
        vectors = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(file, f"not a readable array ({str(exc)[:160]}); rebuild with `ragsam index build`") from None
    if vectors.dtype != np.float32 or vectors.shape != (count, dim):
        raise InputError(file, f"holds {vectors.dtype} {vectors.shape}; expected float32 ({count}, {dim}) "
                               "(one row per index vector); rebuild with `ragsam index build`")
    return vectors


class SupportBank:
    """A loaded support bank (see :mod:`ragsam.retrieval.bank_build` for the folder layout)."""

    def __init__(self, path: Path, index, info: BankInfo, identity: dict, case_ids: np.ndarray,
                 z: np.ndarray, rel_z: np.ndarray, organs: list[tuple[int, ...]], prepared_dir: Path) -> None:
        self.path = path
        self.index = index
        self.info = info
        self.identity = identity
        self.case_ids = case_ids
        self.z = z
        self.rel_z = rel_z
        self.organs = organs
        self.prepared_dir = prepared_dir
        width = max((max(o) for o in organs if o), default=0) + 1
        self._presence = np.zeros((len(organs), width), dtype=bool)  # (n, max organ id + 1)
        for row, ids in enumerate(organs):
            self._presence[row, list(ids)] = True
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self.embeddings = open_embeddings(path, int(index.ntotal), int(index.d))  # memory map or None
        self.refine: int | None = None  # IVF-PQ: shortlist refine x k rows, re-ranked exactly (set by load)
        self._checked: set[str] = set()  # cases verified unchanged in the prepared cache

    @classmethod
    def load(cls, path: str | os.PathLike, prepared_dir: str | os.PathLike | None = None,
             nprobe: int | None = None, ef_search: int | None = None,
             refine: int | None = None) -> SupportBank:
        """Open a bank folder.

        Args:
            prepared_dir: where the prepared cache is now (default: the recorded absolute
                path, else the recorded path relative to the bank).
            nprobe, ef_search: override the stored IVF / HNSW search settings.
            refine: override the stored IVF-PQ shortlist length (a multiple of k, at least 1;
                ignored by other kinds).
        Raises:
            InputError: not a bank, an empty bank, metadata that disagrees with the index, refine < 1.
        """
        path = Path(path)
        if not path.is_dir():
            raise InputError(path, "not a support bank (no such folder); build one with `ragsam index build`")
        info = BankInfo.read(path)
        try:
            identity = json.loads((path / "embedder.json").read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InputError(path, f"not a support bank ({Path(exc.filename).name} missing); "
                                   "build one with `ragsam index build`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(path, f"corrupt bank description ({exc})") from None
        if not isinstance(identity, dict):
            raise InputError(path / "embedder.json", f"expected a JSON object, got {type(identity).__name__}")
        index = load_index(path / "index.faiss")
        stored = info.index_settings
        set_search_params(index, nprobe=nprobe or stored.get("nprobe"), ef_search=ef_search or stored.get("ef_search"))
        case_ids, zs, rel, organs = [], [], [], []
        try:
            with (path / "metadata.csv").open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if tuple(reader.fieldnames or ()) != METADATA_COLUMNS:
                    raise InputError(path / "metadata.csv", f"unexpected columns {reader.fieldnames!r}")
                for i, row in enumerate(reader):
                    if int(row["row"]) != i:
                        raise InputError(path / "metadata.csv", f"row {i} is numbered {row['row']!r}")
                    case_ids.append(row["case_id"])
                    zs.append(int(row["z"]))
                    rel.append(float(row["rel_z"]))
                    organs.append(tuple(int(o) for o in row["organs"].split(";") if o))
        except FileNotFoundError:
            raise InputError(path, "not a support bank (metadata.csv missing)") from None
        except (KeyError, ValueError) as exc:
            raise InputError(path / "metadata.csv", f"malformed row ({exc})") from None
        if not case_ids or int(index.ntotal) == 0:
            raise InputError(path, "the support bank is empty")
        if len(case_ids) != int(index.ntotal):
            raise InputError(path, f"metadata.csv has {len(case_ids)} rows but the index {index.ntotal} vectors")
        prepared = _locate_prepared(path, info, prepared_dir)
        added = {d["id"]: path / ADDITIONS_DIR for d in info.additions or []}
        _check_slices_exist(path / "metadata.csv", case_ids, zs, prepared, added)
        bank = cls(path, index, info, identity, np.asarray(case_ids), np.asarray(zs, dtype=np.int64),
                   np.asarray(rel, dtype=np.float64), organs, prepared)
        if refine is not None:
            check_refine(refine, path)
        if info.kind == "ivfpq" and bank.embeddings is not None:
            bank.refine = int(refine or stored.get("refine") or PQ_REFINE)
        return bank

    def vectors(self) -> np.ndarray:
        """The bank's exact embeddings, float32 ``(n, D)`` in row order: the memory map of
        ``embeddings.npy``, or (older banks) the vectors the index holds."""
        return self.embeddings if self.embeddings is not None else reconstruct_all(self.index)

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.index.d)

    @property
    def kind(self) -> str:
        """Resolved index kind (``flat``, ``ivf``, ``ivfpq`` or ``hnsw``)."""
        return self.info.kind

    def prepare_meta(self) -> CacheMeta:
        """``prepare.json`` of the bank's prepared cache; ``.slice_settings`` holds the HU window and
        slice size a query volume must be sliced with."""
        return CacheMeta.read(self.prepared_dir)

    def embedder(self, device: str | None = None, batch_size: int = 32):
        """Rebuild the embedder this bank was built with (same weights, pooling, input size).

        Raises:
            InputError: the weights found now hash differently from the bank's.
        """
        from ragsam.retrieval.embedder import build_embedder, identity_mismatch

        emb = build_embedder(self.identity["weights"], pooling=self.identity["pooling"],
                             image_size=int(self.identity["image_size"]), device=device, batch_size=batch_size,
                             seed=int(self.identity.get("seed", 0)))
        problem = identity_mismatch(self.identity, emb.identity)
        if problem:
            raise InputError(self.path, problem)
        return emb

    def query(self, vectors: np.ndarray, k: int, embedder_identity: dict,
              exclude_cases: Iterable[str] = (), require_organs: Iterable[int] = (),
              z_prior: float | None = None, query_rel_z: float | Sequence[float] | None = None,
              ) -> list[list[Neighbour]]:
        """The ``k`` best support slices for each query vector.

        Args:
            vectors: float32 ``(Q, D)`` (or ``(D,)``) unit vectors from the bank's embedder.
            k: neighbours per query.
            embedder_identity: ``SliceEmbedder.identity`` of the embedder that made ``vectors``.
            exclude_cases: case ids never returned (e.g. the query's own case).
            require_organs: only slices containing all of these label ids.
            z_prior: weight ``w`` of the relative-z penalty ``w * |rel_z_q - rel_z_s|`` (None/0: off).
            query_rel_z: relative z of each query (a float for all, or ``Q`` floats); needed with a prior.
        Returns:
            ``Q`` lists of ``k`` :class:`Neighbour`, best first (ties broken by row).
        Raises:
            InputError: other embedder, k < 1 or larger than the eligible slices, bad vectors/prior.
        """
        from ragsam.retrieval.embedder import identity_mismatch

        problem = identity_mismatch(self.identity, embedder_identity)
        if problem:
            raise InputError(self.path, problem)
        q = check_unit_vectors(np.atleast_2d(vectors), "query vectors")
        if q.shape[1] != self.dim:
            raise InputError(self.path, f"query vectors have dimension {q.shape[1]}, the bank {self.dim}")
        n = len(self)
        if k < 1 or k > n:
            raise InputError(self.path, f"k={k} must be between 1 and the bank size ({n} slices)")
        weight = float(z_prior or 0.0)
        if weight < 0:
            raise InputError(None, f"z prior weight must be >= 0, got {z_prior!r}")
        qz = np.zeros(len(q))
        if weight > 0:
            if query_rel_z is None:
                raise InputError(None, "a z prior needs query_rel_z (the query slices' relative z in [0, 1])")
            qz = np.broadcast_to(np.asarray(query_rel_z, dtype=np.float64), (len(q),)).copy()
        eligible = self._eligible(set(exclude_cases), tuple(int(o) for o in require_organs))
        n_eligible = int(eligible.sum())
        if k > n_eligible:
            raise InputError(self.path, f"k={k} but only {n_eligible} of {n} slices remain after excluding cases "
                                        f"{sorted(set(exclude_cases))} and requiring organs {sorted(set(require_organs))}")
        # enough for an exact index to hold k eligible rows; with a prior, room to re-rank
        fetch = min(n, (n - n_eligible) + (max(8 * k, 64) if weight else k))
        sims, rows = self._search(q, fetch)  # one batched search; widened per query if needed
        return [self._query_one(q[i], k, eligible, weight, float(qz[i]), fetch, (sims[i], rows[i]))
                for i in range(len(q))]

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The bank's one index search: top ``k`` of float32 ``(Q, D)`` queries as
        ``(cosines float32 (Q, k), rows int64 (Q, k))``; IVF-PQ re-ranked (module docstring)."""
        return search(self.index, q, k, vectors=self.embeddings if self.refine else None, refine=self.refine)

    def _eligible(self, exclude: set[str], organs: tuple[int, ...]) -> np.ndarray:
        """Bool ``(n,)``: rows not in an excluded case and containing every required organ."""
        keep = ~np.isin(self.case_ids, list(exclude)) if exclude else np.ones(len(self), dtype=bool)
        for organ in organs:
            if organ < 0 or organ >= self._presence.shape[1]:
                return np.zeros(len(self), dtype=bool)
            keep &= self._presence[:, organ]
        return keep

    def _rank(self, rows: np.ndarray, sims: np.ndarray, weight: float, qz: float, k: int) -> list[Neighbour]:
        scores = sims - weight * np.abs(qz - self.rel_z[rows]) if weight else sims.astype(np.float64)
        order = np.lexsort((rows, -scores))[:k]
        return [Neighbour(str(self.case_ids[r]), int(self.z[r]), float(self.rel_z[r]), float(scores[j]),
                          self.organs[r], int(r), float(sims[j])) for j, r in ((j, rows[j]) for j in order)]

    def _query_one(self, vector: np.ndarray, k: int, eligible: np.ndarray, weight: float, qz: float,
                   fetch: int, first: tuple[np.ndarray, np.ndarray]) -> list[Neighbour]:
        """Rank one query's candidates; ``first`` is its result of the batched search of ``fetch`` rows."""
        n = len(self)
        sims, rows = first
        while True:
            found = rows >= 0
            sims, rows = sims[found], rows[found]
            ok = eligible[rows]
            hits = self._rank(rows[ok], sims[ok], weight, qz, k)
            complete = len(hits) == k and (weight == 0 or sims.min() <= hits[-1].score)
            if complete or fetch >= n:
                break
            fetch = min(n, 2 * fetch)
            sims, rows = (a[0] for a in self._search(vector[None], fetch))
        if len(hits) < k:  # an approximate index ran out of candidates: score eligible rows exactly
            rows = np.flatnonzero(eligible)
            sims = (np.asarray(self.vectors()[rows]) @ vector).astype(np.float32)
            hits = self._rank(rows, sims, weight, qz, k)
        return hits

    def support_slices(self, neighbours: Sequence[Neighbour]) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of retrieved slices from the prepared cache.

        Returns:
            ``(images float32 (k, S, S) in [0, 1], labels uint8 (k, S, S))`` in the order given.
        Raises:
            InputError: the cache was re-prepared since the bank was built, or a neighbour
                comes from an unlabelled case.
        """
        added = {d["id"] for d in self.info.additions or []}
        self._check_prepared({nb.case_id for nb in neighbours} - self._checked - added)
        self._checked |= {nb.case_id for nb in neighbours}
        images, labels = [], []
        for nb in neighbours:
            if nb.case_id not in self._arrays:
                with_labels = nb.case_id in set(self.info.labelled_cases)
                source = self.path / ADDITIONS_DIR if nb.case_id in added else self.prepared_dir
                arrays = case_arrays(source, nb.case_id, with_labels)
                depth = self.info.case_depths.get(nb.case_id)
                if depth is not None and arrays[0].shape[0] != depth:
                    raise InputError(source, f"case {nb.case_id!r} has {arrays[0].shape[0]} slices in "
                                             f"the cache but {depth} in the bank; rebuild the bank")
                self._arrays[nb.case_id] = arrays
            image, label = self._arrays[nb.case_id]
            if label is None:
                raise InputError(self.prepared_dir, f"case {nb.case_id!r} has no labels; it cannot be a support")
            images.append(np.asarray(image[nb.z], dtype=np.float32))
            labels.append(np.asarray(label[nb.z], dtype=np.uint8))
        if not images:
            size = self.info.slice_size
            return np.zeros((0, size, size), np.float32), np.zeros((0, size, size), np.uint8)
        return np.stack(images), np.stack(labels)

    def _check_prepared(self, case_ids: Iterable[str]) -> None:
        """Refuse a cache rebuilt since the bank was made.

        ``ragsam prepare`` records a fingerprint per case (input files + settings); when the
        bank saved those, only the cases being read must be unchanged (cases added to the
        cache later do not invalidate the bank). Otherwise the whole ``prepare.json`` must match.
        """
        if not (self.prepared_dir / "prepare.json").is_file():
            raise InputError(self.prepared_dir, "the bank's prepared cache is missing (pass its new location)")
        keys = self.info.case_keys
        if keys:
            now = CacheMeta.read(self.prepared_dir).cases
            changed = sorted(c for c in case_ids if c not in now or now[c].key != keys.get(c))
        else:
            same = file_sha256(self.prepared_dir / "prepare.json") == self.info.prepare_sha256
            changed = [] if same else sorted(set(case_ids))
        if changed:
            raise InputError(self.prepared_dir, f"cases {changed[:3]} of the prepared cache changed since the "
                                                "bank was built; rebuild the bank with --force")


def _locate_prepared(bank: Path, info: BankInfo, override: str | os.PathLike | None) -> Path:
    """The prepared cache: the override, else the recorded absolute path, else the relative one."""
    if override is not None:
        return Path(override).resolve()
    recorded = Path(info.prepared_dir)
    if (recorded / "prepare.json").is_file():
        return recorded
    relative = (bank.resolve() / info.prepared_dir_relative).resolve()
    return relative if (relative / "prepare.json").is_file() else recorded

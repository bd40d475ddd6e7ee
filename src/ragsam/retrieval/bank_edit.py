"""Grow a support bank without a rebuild: add labelled slices, list and remove additions.

An addition is stored inside the bank as a pseudo-case of the bank's prepared-cache
format, so :meth:`SupportBank.support_slices` reads it like any other case::

    bank/
      additions/cases/<addition id>/image.npy   float16 (m, S, S) in [0, 1]
      additions/cases/<addition id>/label.npy   uint8   (m, S, S)
      bank.json ["additions"]                   id, source file, source slices, rows, who, when

Every edit holds the bank's folder lock (:func:`ragsam.utils.locking.folder_lock`, waiting
for it), so concurrent edits of one bank (two ``ragsam index add``, or the app and the CLI)
are serialised, and ``index build --force`` is refused while an edit runs. The edit builds the new bank in a temporary sibling folder (unchanged files
hard-linked, changed ones written anew) and then swaps it in
(:func:`ragsam.utils.atomic.atomic_dir`): a crash during an addition leaves the old bank.
A crash between the two renames of the swap leaves the old bank under
``.<bank name>.old-<pid>``; the next edit puts it back (:func:`recover_bank`).
"""

from __future__ import annotations

import csv
import getpass
import io
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ragsam.errors import InputError
from ragsam.retrieval.bank import ADDITIONS_DIR, EMBEDDINGS_FILE, METADATA_COLUMNS, SupportBank
from ragsam.retrieval.bank_info import BankInfo
from ragsam.utils.atomic import atomic_dir, write_text
from ragsam.utils.locking import folder_lock

ADDITION_PREFIX = "added-"
ADDED_SPLIT = "added"


@dataclass(frozen=True)
class Addition:
    """One group of slices added to a bank (a ``bank.json["additions"]`` entry).

    Attributes:
        id: the pseudo-case id of the slices in the bank (``added-0001``).
        source: the image the slices came from (a path, or a name given by the app).
        source_slices: canonical z index of each added slice in the source volume.
        organs: label ids present in the added slices.
        added_by: user name; added_at: UTC time (ISO 8601).
    """

    id: str
    source: str
    source_slices: list[int]
    organs: list[int]
    added_by: str
    added_at: str

    @classmethod
    def from_json(cls, d: dict) -> Addition:
        return cls(str(d["id"]), str(d["source"]), [int(z) for z in d["source_slices"]],
                   [int(o) for o in d["organs"]], str(d["added_by"]), str(d["added_at"]))


def recover_bank(bank_dir: str | os.PathLike) -> bool:
    """Put back a bank left aside by a swap interrupted between its two renames.

    Returns:
        True when a bank was restored.
    """
    bank = Path(bank_dir).resolve()
    if bank.exists():
        return False
    left = sorted(bank.parent.glob(f".{bank.name}.old-*"))
    if not left:
        return False
    os.replace(left[-1], bank)
    return True


def list_additions(bank_dir: str | os.PathLike) -> list[Addition]:
    """The additions recorded in a bank's ``bank.json``, oldest first."""
    bank = SupportBank.load(bank_dir)
    return [Addition.from_json(d) for d in bank.info.additions or []]


def add_slices(bank_dir: str | os.PathLike, images: np.ndarray, labels: np.ndarray, source: str,
               source_slices: Sequence[int], rel_z: Sequence[float], embedder=None,
               added_by: str | None = None) -> Addition:
    """Append labelled slices to a bank: embedding, index rows, metadata and the slices themselves.

    Args:
        images: float ``(m, S, S)`` in [0, 1], sliced with the bank's prepare settings.
        labels: integer ``(m, S, S)``, ids of the bank's label map.
        source: where the slices came from (recorded). source_slices: their z in the source.
        rel_z: relative z in [0, 1] of each slice (used by the retrieval z prior).
        embedder: the bank's embedder if already built (else rebuilt from the bank).
        added_by: recorded user name (default: the login name).
    Returns:
        The recorded :class:`Addition`.
    Raises:
        InputError: shapes that do not fit the bank, unknown label ids, other embedder.
    """
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    with folder_lock(bank_dir, wait=True):
        recover_bank(bank_dir)
        bank = SupportBank.load(bank_dir)
        size = bank.info.slice_size or int(images.shape[-1])
        _check_slices(bank, images, labels, size, source_slices, rel_z)
        if embedder is None:
            embedder = bank.embedder()
        from ragsam.retrieval.embedder import identity_mismatch

        problem = identity_mismatch(bank.identity, embedder.identity)
        if problem:
            raise InputError(bank.path, problem)
        images = images.astype(np.float16).astype(np.float32)  # what the stored float16 slices hold
        vectors = embedder.embed(images)
        number = (bank.info.addition_counter or 0) + 1
        addition = Addition(f"{ADDITION_PREFIX}{number:04d}", str(source), [int(z) for z in source_slices],
                            sorted({int(o) for o in np.unique(labels) if o}),
                            added_by or _user(), datetime.now(timezone.utc).isoformat(timespec="seconds"))
        first = len(bank)
        rows = [(first + i, addition.id, i, float(rel_z[i]), ";".join(str(int(o)) for o in np.unique(lab) if o),
                 ADDED_SPLIT) for i, lab in enumerate(labels)]
        index = bank.index
        index.add(vectors)
        info = replace(bank.info, addition_counter=number, count=len(bank) + len(rows),
                       additions=[*(bank.info.additions or []), asdict(addition)],
                       labelled_cases=[*bank.info.labelled_cases, addition.id],
                       case_depths={**bank.info.case_depths, addition.id: len(rows)})
        _swap(bank, index, _metadata_rows(bank) + rows, info, add=(addition.id, images, labels),
              embeddings=None if bank.embeddings is None else (bank.embeddings, np.asarray(vectors, np.float32)))
    return addition


def add_volume(bank_dir: str | os.PathLike, image_path: str | os.PathLike, labels_path: str | os.PathLike,
               slices: Sequence[int] | None = None, embedder=None, added_by: str | None = None,
               source: str | None = None) -> Addition:
    """Add slices of a labelled CT volume (read and sliced exactly as ``ragsam segment`` does).

    Args:
        image_path: CT file or DICOM folder (HU). labels_path: its label map on the same grid.
        slices: canonical z indices (inferior first) to add; ``None``: every slice with an organ.
        source: what the addition records as its source (default: the image's absolute path).
    Raises:
        InputError: unreadable files, labels on another grid, a slice out of range, no labelled slice.
    """
    from ragsam.data.slices import volume_to_slices
    from ragsam.data.volume import read_image, read_labels

    bank = SupportBank.load(bank_dir)
    image = read_image(image_path)
    labels = read_labels(labels_path, reference=image)
    stack = volume_to_slices(image, labels, bank.prepare_meta().slice_settings)
    depth = len(stack.images)
    if slices is None:
        chosen = [z for z in range(depth) if stack.labels[z].any()]
        if not chosen:
            raise InputError(labels_path, "no slice holds an organ; nothing to add")
    else:
        chosen = sorted(set(int(z) for z in slices))
        bad = [z for z in chosen if not 0 <= z < depth]
        if bad:
            raise InputError(image_path, f"slices {bad[:5]} are outside the {depth} slices of the volume")
    rel = [z / (depth - 1) if depth > 1 else 0.0 for z in chosen]
    return add_slices(bank_dir, stack.images[chosen], stack.labels[chosen], source or str(Path(image_path).resolve()),
                      chosen, rel, embedder=embedder, added_by=added_by)


def remove_addition(bank_dir: str | os.PathLike, addition_id: str) -> Addition:
    """Remove an addition (its rows, vectors and slices); the other rows keep their order.

    Raises:
        InputError: no addition with that id (built slices cannot be removed this way).
    """
    import faiss

    with folder_lock(bank_dir, wait=True):
        recover_bank(bank_dir)
        bank = SupportBank.load(bank_dir)
        entries = bank.info.additions or []
        found = [d for d in entries if d.get("id") == addition_id]
        if not found:
            known = ", ".join(d["id"] for d in entries) or "none"
            raise InputError(bank.path, f"no addition {addition_id!r} (additions: {known})")
        keep = bank.case_ids != addition_id
        if not keep.any():
            raise InputError(bank.path, f"removing {addition_id!r} would leave the bank empty")
        vectors = np.asarray(bank.vectors()[keep], dtype=np.float32)  # exact (embeddings.npy) where stored
        index = faiss.clone_index(bank.index)
        index.reset()  # keeps IVF training; rows are renumbered 0..n-1 in the old order
        index.add(np.ascontiguousarray(vectors))
        rows = [r for r in _metadata_rows(bank) if r[1] != addition_id]
        rows = [(i, *r[1:]) for i, r in enumerate(rows)]
        info = replace(bank.info, count=len(rows), additions=[d for d in entries if d.get("id") != addition_id],
                       labelled_cases=[c for c in bank.info.labelled_cases if c != addition_id],
                       case_depths={c: d for c, d in bank.info.case_depths.items() if c != addition_id})
        _swap(bank, index, rows, info, drop=addition_id,
              embeddings=None if bank.embeddings is None else (vectors, np.zeros((0, bank.dim), np.float32)))
    return Addition.from_json(found[0])


def _check_slices(bank: SupportBank, images: np.ndarray, labels: np.ndarray, size: int,
                  source_slices: Sequence[int], rel_z: Sequence[float]) -> None:
    if images.ndim != 3 or images.shape[1:] != (size, size) or labels.shape != images.shape:
        raise InputError(bank.path, f"slices of shape {images.shape} / labels {labels.shape} do not fit the "
                                    f"bank's ({size}, {size}) slices")
    if len(images) == 0 or len(source_slices) != len(images) or len(rel_z) != len(images):
        raise InputError(bank.path, f"{len(images)} slices with {len(source_slices)} source indices and "
                                    f"{len(rel_z)} relative positions; give one of each per slice")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise InputError(bank.path, "slice images must hold finite values in [0, 1]")
    known = set(bank.prepare_meta().label_names)
    found = {int(o) for o in np.unique(labels) if o}
    if known and not found <= known:
        raise InputError(bank.path, f"label ids {sorted(found - known)} are not in the bank's label map "
                                    f"({sorted(known)})")
    if not found:
        raise InputError(bank.path, "the slices hold no organ label; a support needs labels")


def _metadata_rows(bank: SupportBank) -> list[tuple]:
    with (bank.path / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        return [(int(r["row"]), r["case_id"], int(r["z"]), float(r["rel_z"]), r["organs"], r["split"])
                for r in csv.DictReader(fh)]


def _swap(bank: SupportBank, index, rows: list[tuple], info: BankInfo,
          add: tuple[str, np.ndarray, np.ndarray] | None = None, drop: str | None = None,
          embeddings: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Write the edited bank next to the old one and swap it in (old files hard-linked).

    ``embeddings``: ``(kept, appended)`` float32 rows of the new ``embeddings.npy``
    (``kept`` may be the old memory map: copied in chunks, never loaded whole); ``None``
    for a bank without the file."""
    from ragsam.retrieval.faiss_index import save_index

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(METADATA_COLUMNS)
    writer.writerows((r[0], r[1], r[2], repr(float(r[3])), r[4], r[5]) for r in rows)
    with atomic_dir(bank.path, force=True) as tmp:
        shutil.copytree(bank.path, tmp, dirs_exist_ok=True, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("index.faiss", "metadata.csv", "bank.json", EMBEDDINGS_FILE))
        if drop is not None:
            shutil.rmtree(tmp / ADDITIONS_DIR / "cases" / drop, ignore_errors=True)
        if add is not None:
            folder = tmp / ADDITIONS_DIR / "cases" / add[0]
            folder.mkdir(parents=True)
            np.save(folder / "image.npy", np.asarray(add[1], dtype=np.float16))
            np.save(folder / "label.npy", np.asarray(add[2], dtype=np.uint8))
        save_index(index, tmp / "index.faiss", force=True)
        if embeddings is not None:
            _write_embeddings(tmp / EMBEDDINGS_FILE, *embeddings)
        write_text(tmp / "metadata.csv", text.getvalue())
        info.write(tmp)


def _write_embeddings(path: Path, kept: np.ndarray, appended: np.ndarray, chunk: int = 65536) -> None:
    """``kept`` then ``appended`` rows as one float32 ``.npy``, copied ``chunk`` rows at a time."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                    shape=(len(kept) + len(appended), kept.shape[1]))
    for start in range(0, len(kept), chunk):
        stop = min(start + chunk, len(kept))
        out[start:stop] = kept[start:stop]
    out[len(kept):] = appended
    out.flush()
    del out


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link unchanged files (no copy of a large bank); copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def addition_summary(addition: Addition) -> str:
    """One line for the CLI: id, slices, organs, who and when, source."""
    return (f"{addition.id}: {len(addition.source_slices)} slices (z {_ranges(addition.source_slices)}), "
            f"organs {','.join(map(str, addition.organs))}, by {addition.added_by} at {addition.added_at}, "
            f"from {addition.source}")


def _ranges(values: Sequence[int]) -> str:
    out, items = [], sorted(values)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)


def parse_slices(text: str) -> list[int]:
    """``"3,5-7"`` -> ``[3, 5, 6, 7]``.

    Raises:
        InputError: not comma-separated integers or ranges.
    """
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if "-" in part[1:]:
                low, high = part.split("-", 1)
                out.extend(range(int(low), int(high) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise InputError(None, f"--slices must be comma-separated z indices or ranges like 3,5-7, got {text!r}") from None
    return out


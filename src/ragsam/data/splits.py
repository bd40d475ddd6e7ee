"""Train/test splits: the paper's datasets, k-fold cross-validation, ``splits.json`` (:class:`Splits`).

The paper (Section 4.1) splits BTCV's 30 labelled scans into 24 training / 6 test
scans and FLARE22's 50 labelled cases into 30 training / 20 test cases, without
listing the case ids. Named rules (``prepare --split NAME``):

* ``btcv`` - the split the community uses for BTCV 24/6: MONAI's and UNETR's
  ``dataset_0.json`` (also Swin-UNETR's, and the file Med-SA's README tells its
  users to download) trains on 0001-0010 and 0021-0034 and validates on
  **0035-0040** (:data:`BTCV_COMMUNITY_TEST`). Cases are matched by the number in
  their id (``0035``, ``img0035`` and ``label0035`` are case 35). Numbers on
  another split are not comparable with the published ones.
* ``btcv-even`` and ``flare22`` - a documented, deterministic rule (FLARE22 has no
  community 30/20 split of its 50 labelled cases)::

    sort the case ids; the test cases are the ids at positions
    ``floor((k + 0.5) * N / n_test)`` for ``k = 0 .. n_test - 1``

  i.e. evenly spread over the sorted ids. BTCV's 30 scans give 0003, 0008, 0023,
  0028, 0033, 0038 (positions 2, 7, 12, 17, 22, 27); FLARE22_Tr_0001..0050 give
  test positions 1, 3, 6, 8, ... 46, 48. No random generator: the same split on
  every numpy version, checkable by hand.

With a different number of cases than the rule expects, ``strict=True`` refuses;
the default keeps the rule's test fraction: ``btcv`` tests on the 0035-0040 cases
present, or, when none is present (a partial download, the shared CT), falls back
to the evenly spaced rule with ``n_test = round(N * 6 / 30)``, at least 1, leaving
at least 1 training case (documented fallback for partial downloads and smoke tests).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragsam.errors import InputError
from ragsam.utils.atomic import write_json
from ragsam.utils.formats import check_format_version, read_json_object

#: split rule -> (number of labelled cases, number of test cases) stated in the paper.
PAPER_SPLITS: dict[str, tuple[int, int]] = {"btcv": (30, 6), "btcv-even": (30, 6), "flare22": (50, 20)}
#: MONAI / UNETR ``dataset_0.json``: the 24 training and 6 validation scans of BTCV, by case number.
BTCV_COMMUNITY_TRAIN: tuple[int, ...] = (*range(1, 11), *range(21, 35))
BTCV_COMMUNITY_TEST: tuple[int, ...] = tuple(range(35, 41))
_CASE_NUMBER = re.compile(r"(\d+)\D*$")


def case_number(case_id: str) -> int | None:
    """The number a BTCV case id ends with (``img0035`` -> 35, ``0035.nii`` -> 35); None without digits."""
    match = _CASE_NUMBER.search(case_id)
    return None if match is None else int(match.group(1))


def btcv_community_split(case_ids: Iterable[str], strict: bool = False) -> dict[str, list[str]]:
    """BTCV's community 24/6 split (test = cases 35-40; see the module docstring).

    Raises:
        InputError: duplicate ids; with ``strict``, any id set other than cases 1-10 and 21-40.
    """
    ids = _sorted_unique(case_ids)
    numbers = {c: case_number(c) for c in ids}
    if strict:
        expected = set(BTCV_COMMUNITY_TRAIN) | set(BTCV_COMMUNITY_TEST)
        found = sorted(n for n in numbers.values() if n is not None)
        if len(ids) != 30 or set(found) != expected or len(found) != 30:
            raise InputError(None, f"the community btcv split needs the 30 labelled cases 0001-0010 and "
                                   f"0021-0040, got {len(ids)} case(s)")
    test = [c for c in ids if numbers[c] in BTCV_COMMUNITY_TEST]
    if not test:
        return paper_split(ids, "btcv-even")
    if len(test) == len(ids):
        raise InputError(None, "every case is a btcv test case (0035-0040): nothing is left to train on")
    return {"train": [c for c in ids if c not in test], "test": test}


def _sorted_unique(case_ids: Iterable[str], where: str | None = None) -> list[str]:
    ids = [str(c) for c in case_ids]
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise InputError(where, f"duplicate case ids: {', '.join(dupes[:5])}")
    return sorted(ids)


def evenly_spaced_test(case_ids: Sequence[str], n_test: int) -> dict[str, list[str]]:
    """Split sorted ``case_ids`` with the evenly spaced rule of this module.

    Returns:
        ``{"train": [...], "test": [...]}``, both sorted.
    """
    ids = _sorted_unique(case_ids)
    n = len(ids)
    if not 0 < n_test < n:
        raise InputError(None, f"cannot take {n_test} test cases from {n} case(s)")
    picks = {math.floor((k + 0.5) * n / n_test) for k in range(n_test)}
    return {"train": [c for i, c in enumerate(ids) if i not in picks], "test": [ids[i] for i in sorted(picks)]}


def paper_split(case_ids: Iterable[str], dataset: str, strict: bool = False) -> dict[str, list[str]]:
    """A named split: ``"btcv"`` (community 24/6), ``"btcv-even"`` (24/6 evenly spaced), ``"flare22"`` (30/20).

    Args:
        case_ids: the labelled case ids.
        dataset: the rule's name (case-insensitive; see the module docstring).
        strict: refuse when the cases differ from the paper's.
    Returns:
        ``{"train": [...], "test": [...]}``.
    Raises:
        InputError: unknown dataset, fewer than 2 cases, duplicate ids, or (strict) a
            case count other than the paper's.
    """
    key = dataset.strip().lower()
    if key not in PAPER_SPLITS:
        raise InputError(None, f"no paper split for dataset {dataset!r}; known: {', '.join(PAPER_SPLITS)}")
    if key == "btcv":
        return btcv_community_split(case_ids, strict)
    ids = _sorted_unique(case_ids)
    total, n_test = PAPER_SPLITS[key]
    n = len(ids)
    if n != total:
        if strict:
            raise InputError(None, f"the paper's {key} split needs {total} labelled cases, got {n}")
        if n < 2:
            raise InputError(None, f"a train/test split needs at least 2 labelled cases, got {n}")
        n_test = min(max(1, round(n * n_test / total)), n - 1)
    return evenly_spaced_test(ids, n_test)


def kfold(case_ids: Iterable[str], k: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """``k``-fold cross-validation folds.

    The sorted ids are shuffled with ``numpy.random.default_rng(seed)``; fold ``i``
    validates on every ``k``-th shuffled id starting at ``i`` (fold sizes differ by at
    most 1) and trains on the rest.

    Returns:
        ``k`` dicts ``{"train": [...], "val": [...]}`` (sorted lists).
    Raises:
        InputError: ``k < 2`` or more folds than cases.
    """
    ids = _sorted_unique(case_ids)
    if k < 2 or k > len(ids):
        raise InputError(None, f"k-fold needs 2 <= k <= number of cases ({len(ids)}), got k={k}")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    folds = []
    for i in range(k):
        val = set(order[i::k])
        folds.append({"train": [c for c in ids if c not in val], "val": sorted(val)})
    return folds


def validate_splits(splits: Any, source: str | os.PathLike | None = None, case_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Check a splits object: ``{"train": [...], "test": [...], "folds": [{"train", "val"}]}``.

    ``train`` and ``test`` must be disjoint lists of unique strings; every id must be in
    ``case_ids`` when given.

    Raises:
        InputError: naming ``source`` and the problem.
    """
    if not isinstance(splits, dict) or not isinstance(splits.get("train"), list):
        raise InputError(source, 'splits must be a JSON object with a "train" list')
    known = None if case_ids is None else set(map(str, case_ids))

    def check_list(name: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise InputError(source, f"splits {name!r} must be a list of case id strings, got {value!r}")
        if len(set(value)) != len(value):
            dupes = sorted({c for c in value if value.count(c) > 1})
            raise InputError(source, f"splits {name!r} repeats case ids {dupes[:5]}")
        if known is not None and set(value) - known:
            raise InputError(source, f"splits {name!r} names unknown case ids {sorted(set(value) - known)[:5]}")
        return value

    train = check_list("train", splits["train"])
    test = check_list("test", splits.get("test", []))
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise InputError(source, f"case ids in both train and test: {overlap[:5]}")
    folds = splits.get("folds", [])
    if not isinstance(folds, list):
        raise InputError(source, f"splits 'folds' must be a list, got {folds!r}")
    for i, fold in enumerate(folds):
        if not isinstance(fold, dict):
            raise InputError(source, f"fold {i} must be an object with train/val lists")
        f_train, f_val = check_list(f"folds[{i}].train", fold.get("train")), check_list(f"folds[{i}].val", fold.get("val"))
        if set(f_train) & set(f_val):
            raise InputError(source, f"fold {i}: case ids in both train and val: {sorted(set(f_train) & set(f_val))[:5]}")
    return splits


def save_splits(path: str | os.PathLike, splits: dict[str, Any], force: bool = False) -> Path:
    """Validate and write ``splits`` as JSON atomically. Returns ``path``."""
    validate_splits(splits, path)
    return write_json(path, splits, force=force)


SPLITS_FILE = "splits.json"
SPLITS_VERSION = 1
SPLITS_VERSIONS = (1,)
_REBUILD = "rebuild the cache with `ragsam prepare --force`"


@dataclass(frozen=True)
class Splits:
    """``splits.json``: named lists of case ids and, after k-fold, the folds.

    The one reader of the file, for a prepared cache's and for a user's own (``prepare --splits``).
    Written by :func:`save_splits` without a version key (a file without one is version 1).

    Attributes:
        named: split name -> case ids, in file order (``train``, ``test`` and any other list).
        folds: ``[{"train": [...], "val": [...]}, ...]`` (empty without k-fold).
        format_version: the file's format version.
    """

    named: dict[str, list[str]]
    folds: list[dict[str, list[str]]] = field(default_factory=list)
    format_version: int = SPLITS_VERSION

    @property
    def train(self) -> list[str]:
        return self.named["train"]

    @property
    def test(self) -> list[str]:
        return self.named.get("test", [])

    def names(self) -> list[str]:
        """Every list of the file by name (for messages), ``folds`` last when present."""
        return [*self.named, *(["folds"] if self.folds else [])]

    def to_json(self) -> dict[str, Any]:
        """The content of ``splits.json`` (as :func:`save_splits` writes it)."""
        return {**self.named, **({"folds": self.folds} if self.folds else {})}

    @classmethod
    def from_json(cls, d: Any, path: str | os.PathLike | None = None,
                  case_ids: Iterable[str] | None = None) -> Splits:
        """Validate ``d`` (:func:`validate_splits`; ``case_ids``: the ids it may name) and type it.

        Raises:
            InputError: an unsupported version or invalid splits, naming ``path``.
        """
        version = check_format_version(path or SPLITS_FILE, d.get("format_version") if isinstance(d, dict) else None,
                                       SPLITS_VERSIONS, _REBUILD)
        validate_splits(d, path, case_ids)
        named = {str(k): list(v) for k, v in d.items() if k != "folds" and isinstance(v, list)}
        return cls(named, list(d.get("folds") or []), version)

    @classmethod
    def read(cls, path: str | os.PathLike, case_ids: Iterable[str] | None = None) -> Splits:
        """``splits.json`` of a prepared cache folder, or a splits file.

        Raises:
            InputError: a missing, corrupt, newer or invalid file (one line naming it).
        """
        path = Path(path)
        folder = path.is_dir()
        file = path / SPLITS_FILE if folder else path
        d = read_json_object(file, "missing; run `ragsam prepare` again" if folder else "does not exist")
        return cls.from_json(d, file, case_ids)

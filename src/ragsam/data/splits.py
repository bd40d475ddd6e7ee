"""Train/test splits: the paper's presets, k-fold cross-validation, JSON files.

The paper (Section 4) splits BTCV's 30 labelled scans into 24 training / 6 test
scans and FLARE22's 50 labelled cases into 30 training / 20 test cases, without
listing the case ids. We therefore fix a documented, deterministic rule:

    sort the case ids; the test cases are the ids at positions
    ``floor((k + 0.5) * N / n_test)`` for ``k = 0 .. n_test - 1``

i.e. evenly spread over the sorted ids. BTCV's 30 training scans (ids 0001-0010 and
0021-0040) give test cases 0003, 0008, 0023, 0028, 0033, 0038 (positions 2, 7, 12, 17,
22, 27); FLARE22_Tr_0001..0050 give test positions 1, 3, 6, 8, ... 46, 48. The rule needs no random generator, so it gives
the same split on every numpy version and can be checked by hand.

With a different number of cases than the preset expects, ``strict=True`` refuses;
the default keeps the preset's test fraction: ``n_test = round(N * n_test_preset /
N_preset)``, at least 1, leaving at least 1 training case (documented fallback for
partial downloads and smoke tests).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragsam.errors import InputError
from ragsam.utils.atomic import write_json

#: dataset -> (number of labelled cases, number of test cases) stated in the paper.
PAPER_SPLITS: dict[str, tuple[int, int]] = {"btcv": (30, 6), "flare22": (50, 20)}


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
    """The paper's split for ``dataset`` (``"btcv"``: 24/6, ``"flare22"``: 30/20).

    Args:
        case_ids: the labelled case ids.
        dataset: ``"btcv"`` or ``"flare22"`` (case-insensitive).
        strict: refuse when the number of cases differs from the paper's.
    Returns:
        ``{"train": [...], "test": [...]}``.
    Raises:
        InputError: unknown dataset, fewer than 2 cases, duplicate ids, or (strict) a
            case count other than the paper's.
    """
    key = dataset.strip().lower()
    if key not in PAPER_SPLITS:
        raise InputError(None, f"no paper split for dataset {dataset!r}; known: {', '.join(PAPER_SPLITS)}")
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


def load_splits(path: str | os.PathLike, case_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Read and validate a splits JSON file (see :func:`validate_splits`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON ({exc})") from None
    return validate_splits(data, path, case_ids)

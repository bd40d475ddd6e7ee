"""What the app may show: the folders given on the command line, their cases, organ names and colours.

Every file the browser asks for is named as ``(root, relative path)``; the root is one
of the folders given on the command line (or the app's own state folder) and the path
is resolved with :func:`ragsam.utils.paths.resolve_inside`, so no request reaches
outside them.

Cases come from a dataset (``--data``, any layout :func:`ragsam.data.layouts.discover_cases`
reads) and prediction folders (``--predictions``): ``<folder>/<method>/<case>.nii.gz``
(an experiment's or the demo's ``predictions/``) or ``<folder>/<case>.nii.gz`` (one
method, named after the folder). A prediction is matched to a dataset case by case id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ragsam.errors import InputError
from ragsam.utils.paths import LABEL_FILE_SUFFIXES, resolve_inside


@dataclass
class CaseEntry:
    """One case the page lists: its CT, ground truth (or None) and predictions (method -> file)."""

    case_id: str
    image: tuple[str, str]                      # (root, relative path)
    labels: tuple[str, str] | None
    predictions: dict[str, tuple[str, str]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.case_id, "image": list(self.image), "labels": list(self.labels) if self.labels else None,
                "predictions": {m: list(p) for m, p in sorted(self.predictions.items())}}


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in LABEL_FILE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _label_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(LABEL_FILE_SUFFIXES))


class Catalog:
    """The named folders (roots) of one app session and the cases found in them.

    Args:
        roots: name -> folder (``data``, ``pred0``..., ``work``); each must exist.
        data: the root name holding a dataset, if any.
        predictions: root names of prediction folders.
    Raises:
        InputError: a folder that does not exist.
    """

    def __init__(self, roots: dict[str, Path], data: str | None = None, predictions: tuple[str, ...] = ()) -> None:
        for name, folder in roots.items():
            if not Path(folder).is_dir():
                raise InputError(folder, f"--{name.rstrip('0123456789')} folder does not exist")
        self.roots = {name: Path(folder).resolve() for name, folder in roots.items()}
        self.data = data
        self.predictions = predictions

    def resolve(self, root: str, relative: str | os.PathLike) -> Path:
        """The file ``relative`` inside root ``root``.

        Raises:
            InputError: unknown root, a path escaping it, or (in ``scans``) an upload not yet
                accepted (its hidden staging folder): only checked files are ever read.
        """
        if root not in self.roots:
            raise InputError(None, f"unknown folder {root!r}")
        if root == "scans" and any(part.startswith(".") and part != ".." for part in Path(relative).parts):
            raise InputError(f"<{root}>", f"path {str(relative)!r} is an upload still being checked")
        return resolve_inside(self.roots[root], relative, f"<{root}>")

    def relative(self, root: str, path: Path) -> tuple[str, str]:
        return root, str(Path(path).resolve().relative_to(self.roots[root]))

    def cases(self) -> list[CaseEntry]:
        """Dataset cases with their matched predictions, in case-id order."""
        from ragsam.data.layouts import discover_cases

        if self.data is None:
            return []
        entries = {}
        for ref in discover_cases(self.roots[self.data]):
            entries[ref.case_id] = CaseEntry(
                ref.case_id, self.relative(self.data, ref.image),
                self.relative(self.data, ref.labels) if ref.labels is not None else None)
        for root in self.predictions:
            for method, files in self._prediction_files(root).items():
                for path in files:
                    entry = entries.get(_case_id(path))
                    if entry is not None:
                        entry.predictions[method] = self.relative(root, path)
        return [entries[c] for c in sorted(entries)]

    def _prediction_files(self, root: str) -> dict[str, list[Path]]:
        folder = self.roots[root]
        found = {sub.name: _label_files(sub) for sub in sorted(folder.iterdir()) if sub.is_dir()}
        found = {m: files for m, files in found.items() if files}
        direct = _label_files(folder)
        if direct:
            found[folder.name] = direct
        return found

    def case(self, case_id: str) -> CaseEntry:
        for entry in self.cases():
            if entry.case_id == case_id:
                return entry
        raise InputError(None, f"no case {case_id!r}")


def organ_table(label_names: dict[int, str]) -> list[dict]:
    """Organ id, name and colour (``#rrggbb``, the reports' colours) for the page's legend and LUT."""
    from ragsam.data.label_maps import PALETTE

    return [{"id": i, "name": name, "colour": PALETTE[(i - 1) % len(PALETTE)]}
            for i, name in sorted(label_names.items()) if i > 0]


def label_names_for(bank_dir: Path | None) -> dict[int, str]:
    """Organ names: the bank's prepared label map, else BTCV's."""
    from ragsam.data.label_maps import load_label_map

    if bank_dir is not None:
        from ragsam.retrieval.bank import SupportBank

        names = SupportBank.load(bank_dir).prepare_meta().label_names
        if names:
            return names
    return dict(load_label_map("btcv").labels)

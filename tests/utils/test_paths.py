"""Paths named by dataset files must stay inside the dataset root."""

from __future__ import annotations

import os

import pytest

from ragsam.errors import InputError
from ragsam.utils.paths import resolve_inside


def test_inside_path_resolves(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    assert resolve_inside(tmp_path, "./imagesTr/a.nii.gz", "dataset.json") == tmp_path.resolve() / "imagesTr" / "a.nii.gz"


@pytest.mark.parametrize("bad", ["../secret.nii.gz", "imagesTr/../../x", "/etc/passwd"])
def test_escaping_paths_are_refused(tmp_path, bad):
    with pytest.raises(InputError, match="dataset.json"):
        resolve_inside(tmp_path, bad, tmp_path / "dataset.json")


def test_symlink_escape_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(InputError, match="escapes"):
        resolve_inside(root, "link/file.nii.gz", "dataset.json")

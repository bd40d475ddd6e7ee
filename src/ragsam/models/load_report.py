"""``LoadReport``: what a model loader did with a checkpoint.

Every SAM loader returns one (:func:`ragsam.models.loading.load_pretrained`,
:func:`ragsam.models.build.build_sam_model` as ``model.load_report``, the
promptable SAM loader of the baselines); run settings and the CLI read its
attributes, never string keys. ``to_json`` is what goes into a JSON record::

    format_version   LOAD_REPORT_VERSION (a record without one is version 1)
    source           the weights (path, Hub id or "random")
    arch             registry name of the architecture
    image_size       model input side (px), when the loader sets it
    resized          position tensors resized to the model's input size
    new              decoder entries initialised afresh (one mask token each)
    dropped          checkpoint tensors left out (mask tokens the model does not have)
    reused_tokens    checkpoint mask tokens kept ("0..3")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ragsam.errors import InputError
from ragsam.utils.formats import check_format_version

LOAD_REPORT_VERSION = 1
LOAD_REPORT_VERSIONS = (1,)


@dataclass
class LoadReport:
    """What was loaded, resized, newly initialised and dropped (see the module docstring)."""

    source: str
    arch: str
    image_size: int | None = None
    resized: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reused_tokens: list[str] = field(default_factory=list)
    format_version: int = LOAD_REPORT_VERSION

    @classmethod
    def random(cls, arch: str, image_size: int | None = None) -> LoadReport:
        """The report of a randomly initialised model (every parameter is new)."""
        return cls(source="random", arch=arch, image_size=image_size, new=["all parameters"])

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "source": self.source, "arch": self.arch,
                "image_size": self.image_size, "resized": self.resized, "new": self.new,
                "dropped": self.dropped, "reused_tokens": self.reused_tokens}

    @classmethod
    def from_json(cls, d: dict[str, Any], path: str | os.PathLike | None = None) -> LoadReport:
        """Parse a recorded report; ``path`` (the record's file) is named in messages.

        Raises:
            InputError: an unsupported version or a malformed field.
        """
        version = check_format_version(path or "load report", d.get("format_version"), LOAD_REPORT_VERSIONS,
                                       "load the weights again")
        try:
            size = d.get("image_size")
            return cls(source=str(d["source"]), arch=str(d["arch"]), image_size=None if size is None else int(size),
                       resized=[str(k) for k in d.get("resized") or []], new=[str(k) for k in d.get("new") or []],
                       dropped=[str(k) for k in d.get("dropped") or []],
                       reused_tokens=[str(k) for k in d.get("reused_tokens") or []], format_version=version)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(path, f"malformed load report ({exc!r})") from None

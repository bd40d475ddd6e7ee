"""Query a support bank with one slice of a cached case or of a CT file (``ragsam index query``).

The query slice is made exactly as the bank's slices were: a cached case is read
from the prepared cache; a CT file is sliced with the cache's HU window and size
and rounded through float16 like the cache's ``image.npy``, so a slice of a case
that is in the bank embeds to exactly its bank vector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ragsam.errors import InputError
from ragsam.retrieval.bank import Neighbour, SupportBank, case_arrays


@dataclass
class SliceQuery:
    """The answer to one query slice.

    Attributes:
        source: the case id or the image path queried.
        z: the slice index; rel_z: its relative position in [0, 1].
        neighbours: the ranked support slices.
        organ_names: ``{label id: organ name}`` of the bank's label map.
    """

    source: str
    z: int
    rel_z: float
    neighbours: list[Neighbour]
    organ_names: dict[int, str] = field(default_factory=dict)


def volume_slices(bank: SupportBank, image: str | os.PathLike) -> np.ndarray:
    """Slices of a CT file made as the bank's cache made them: float32 ``(Z, S, S)`` in [0, 1]."""
    from ragsam.data.file_checks import check_ct_values
    from ragsam.data.slices import volume_to_slices
    from ragsam.data.volume import read_image

    volume = read_image(image)
    check_ct_values(volume.array, image)
    images = volume_to_slices(volume, None, bank.prepare_meta().slice_settings).images
    return images.astype(np.float16).astype(np.float32)  # the cache stores float16


def query_slice(bank_dir: str | os.PathLike, z: int, *, case: str | None = None,
                image: str | os.PathLike | None = None, k: int = 5, exclude_own_case: bool = False,
                require_organs: tuple[int, ...] = (), z_prior: float | None = None,
                prepared_dir: str | os.PathLike | None = None, device: str | None = None) -> SliceQuery:
    """The ``k`` support slices nearest to slice ``z`` of ``case`` (in the cache) or of ``image``.

    Args:
        bank_dir: the bank folder. prepared_dir: where its prepared cache is now, if it moved.
        z: slice index of the query (canonical order, inferior first).
        case / image: exactly one of a cached case id and a CT file.
        exclude_own_case: leave the query's own case out (``case`` only).
        require_organs, z_prior: see :meth:`SupportBank.query`.
        device: the embedder's device (see :func:`ragsam.utils.device.resolve_device`).
    Raises:
        InputError: both or neither of ``case`` / ``image``, ``z`` out of range, bad bank or cache.
    """
    if (case is None) == (image is None):
        raise InputError(None, "give exactly one of --case ID or --image FILE")
    if exclude_own_case and case is None:
        raise InputError(None, "--exclude-own-case needs --case")
    bank = SupportBank.load(bank_dir, prepared_dir=prepared_dir)
    if case is not None:
        slices, source = case_arrays(bank.prepared_dir, case, with_labels=False)[0], str(case)
    else:
        slices, source = volume_slices(bank, image), str(image)
    if not 0 <= z < len(slices):
        raise InputError(image or bank.prepared_dir, f"--z {z} is outside the {len(slices)} slices of {source}")
    rel_z = z / (len(slices) - 1) if len(slices) > 1 else 0.0
    embedder = bank.embedder(device=device)
    vector = embedder.embed(np.asarray(slices[z:z + 1], dtype=np.float32))
    hits = bank.query(vector, k, embedder.identity, exclude_cases=[case] if exclude_own_case and case else [],
                      require_organs=require_organs, z_prior=z_prior, query_rel_z=rel_z)[0]
    return SliceQuery(source, z, rel_z, hits, bank.prepare_meta().label_names)

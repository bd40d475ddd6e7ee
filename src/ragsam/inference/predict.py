"""``predict(run_dir, input, output)``: segment CT volumes with a trained run.

Per case: read the image (NIfTI/NRRD/MHA file or DICOM series, in HU) ->
:func:`~ragsam.data.slices.volume_to_slices` with the run's slice settings (HU
window of its cache, ``model.image_size``, 2.5D context) -> batched inference
(no grad, bf16 autocast on CUDA, LoRA merged) -> softmax probabilities ->
:func:`~ragsam.data.slices.slices_to_volume` (bilinear to the canonical
in-plane size, argmax, reoriented) -> :func:`~ragsam.data.volume.write_labels`
on the input's own grid, atomically.

Outputs: ``<output>/<case_id>.nii.gz`` for each case; for a single input case an
``output`` ending in ``.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.mha`` names the file
itself. Every output is checked before any work starts: an existing file is
replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ragsam.errors import InputError, OutputExistsError
from ragsam.inference.run_loader import load_run
from ragsam.training.distributed import pick_device

FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class Prediction:
    """One written segmentation: case id, output file, slices, organ ids found."""

    case_id: str
    path: Path
    slices: int
    organs: list[int]


def _batched_logits(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device | None,
                    bf16: bool) -> Iterator[torch.Tensor]:
    """float32 logits ``(B, K+1, S, S)`` of successive batches of ``images`` (no grad)."""
    device = device or next(model.parameters()).device
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda"
                else contextlib.nullcontext())
    for start in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).float().to(device)
        with autocast:
            logits = model(x)
        yield logits.float()


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: np.ndarray, batch_size: int = 8,
                          device: torch.device | None = None, bf16: bool = True) -> torch.Tensor:
    """Softmax probabilities of every slice.

    Args:
        model: ``(B, 3, S, S) in [0, 1] -> logits (B, K+1, S, S)``, in eval mode.
        images: float32 ``(Z, 3, S, S)`` model inputs.
        batch_size: slices per forward pass.
        device: where the model runs (default: the model's device).
        bf16: bfloat16 autocast when running on CUDA.
    Returns:
        float32 ``(Z, K+1, S, S)`` probabilities, on ``device`` (kept there for the resize).
    """
    return torch.cat([torch.softmax(logits, dim=1) for logits in _batched_logits(model, images, batch_size,
                                                                                  device, bf16)])


@torch.no_grad()
def predict_labels(model: nn.Module, images: np.ndarray, batch_size: int = 8,
                   device: torch.device | None = None, bf16: bool = True) -> torch.Tensor:
    """Label of every pixel at model size, without keeping any probabilities.

    The argmax of the logits equals the argmax of the softmax, and ``max(dim=1).indices``
    is several times faster than ``argmax`` over the class axis on CPU.

    Args:
        model, images, batch_size, device, bf16: as :func:`predict_probabilities`.
    Returns:
        uint8 ``(Z, S, S)`` labels on the CPU.
    """
    return torch.cat([logits.max(dim=1).indices.to(torch.uint8).cpu()
                      for logits in _batched_logits(model, images, batch_size, device, bf16)])


def _segment_stack(model: nn.Module, stack, batch_size: int, device: torch.device, bf16: bool) -> np.ndarray:
    """Labels ``(z, y, x)`` on the original grid for one :class:`~ragsam.data.slices.SliceStack`.

    Inputs are built a chunk at a time. When the canonical in-plane size equals the
    model size the bilinear resize back is the identity, so each chunk is reduced to
    its argmax at once; otherwise all probabilities are kept for the bilinear resize.
    """
    from ragsam.data.slices import slices_to_volume

    depth, height, width = stack.grid.canonical_shape
    same_size = (height, width) == (stack.grid.size, stack.grid.size)
    chunk = max(batch_size, 32)
    parts = []
    for start in range(0, depth, chunk):
        images = np.stack([stack.model_input(z, channels=3) for z in range(start, min(start + chunk, depth))])
        if same_size:
            parts.append(predict_labels(model, images, batch_size, device, bf16))
        else:
            parts.append(predict_probabilities(model, images, batch_size, device, bf16))
    pred = torch.cat(parts)
    return slices_to_volume(pred.numpy() if same_size else pred, stack.grid)


def _outputs(case_ids: list[str], output: Path) -> list[Path]:
    if len(case_ids) == 1 and output.name.lower().endswith(FILE_SUFFIXES):
        return [output]
    if output.exists() and not output.is_dir():
        raise InputError(output, "exists and is not a folder (several cases need an output folder)")
    return [output / f"{cid}.nii.gz" for cid in case_ids]


def predict(run_dir: str | os.PathLike, input_path: str | os.PathLike, output_path: str | os.PathLike,
            force: bool = False, batch_size: int = 8, device: str = "auto", layout: str = "auto",
            series_uid: str | None = None) -> list[Prediction]:
    """Segment every case of ``input_path`` with the run in ``run_dir``.

    Args:
        run_dir: a finished ``ragsam train`` run.
        input_path: an image file, a DICOM series folder, or a dataset folder
            (any layout :func:`ragsam.data.layouts.discover_cases` understands).
        output_path: output folder (or file, for one case).
        force: replace existing outputs.
        batch_size: slices per forward pass. device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        layout: dataset layout of ``input_path`` (``auto`` detects it).
        series_uid: DICOM series to read when a folder holds several.
    Returns:
        One :class:`Prediction` per case, in case-id order.
    Raises:
        InputError / OutputExistsError: bad run, unreadable input, existing outputs.
    """
    from ragsam.data.layouts import discover_cases
    from ragsam.data.slices import SliceSettings, volume_to_slices
    from ragsam.data.volume import read_image, write_labels

    if batch_size < 1:
        raise InputError(None, f"batch size must be >= 1, got {batch_size}")
    dev = pick_device(device)
    model, cfg = load_run(run_dir, dev, merge=True)
    if cfg.data.window is None:
        raise InputError(Path(run_dir) / "config.yaml", "data.window is not set (was this run started by ragsam train?)")
    settings = SliceSettings(window=tuple(cfg.data.window), size=cfg.model.image_size, context=cfg.data.context)
    refs = discover_cases(input_path, layout=layout)
    if not refs:
        raise InputError(input_path, "no images found")
    outputs = _outputs([r.case_id for r in refs], Path(output_path))
    for out in outputs:  # refuse before any work, so nothing is half-done
        if out.exists() and not force:
            raise OutputExistsError(out)
    results = []
    for ref, out in zip(refs, outputs, strict=True):
        image = read_image(ref.image, series_uid=series_uid)
        stack = volume_to_slices(image, None, settings)
        labels = _segment_stack(model, stack, batch_size, dev, cfg.optim.bf16)
        write_labels(labels, image.geometry, out, force=force)
        found = sorted(int(v) for v in np.unique(labels) if v != 0)
        results.append(Prediction(ref.case_id, out, int(labels.shape[0]), found))
    return results

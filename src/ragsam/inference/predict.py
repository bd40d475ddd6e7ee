"""``predict(run_dir, input, output)``: segment CT volumes with a trained run.

Per case: read the image (NIfTI/NRRD/MHA file or DICOM series, in HU) -> the
slices of :func:`~ragsam.data.slices.volume_to_slices` with the run's settings (HU
window of its cache, ``model.image_size``, 2.5D context), prepared batch by batch
(:func:`~ragsam.data.slices.lazy_slices`) -> batched inference
(no grad, LoRA merged, bf16 autocast where :mod:`ragsam.utils.precision` says) ->
labels per batch -> :func:`~ragsam.data.slices.slices_to_volume` (reoriented to the
input's grid) -> :func:`~ragsam.data.volume.write_labels`, atomically.

Labels: when the canonical in-plane size equals ``model.image_size`` each slice's
label is the argmax of its logits (softmax is monotonic); otherwise the softmax is
resized bilinearly to the canonical size and its argmax taken, one batch at a time
(never the probabilities of the whole volume).

The stages overlap in helper threads when a core is free for them (a GPU run, or
torch using fewer threads than there are cores: :func:`default_overlap`); numpy and
torch release the GIL, so the threads use that core:

* a thread assembles the next batch of model inputs while the model runs;
* a thread turns each batch's low-resolution logits into labels (upsampling,
  resize, argmax) while the model runs the next batch;
* for several cases, the next case is read and sliced, and the previous case's
  labels are written, while the current case is segmented.

Errors of any stage are raised in the caller (a failed write before the next case
is queued), and outputs stay atomic: a failed case leaves no file behind. With
``overlap=False`` the same stages run one after another in the caller's thread;
on a machine whose cores are all busy that is the faster choice (measured in
``bench/volume_inference.py --serial``).

Outputs: ``<output>/<case_id>.nii.gz`` for each case; for a single input case an
``output`` ending in ``.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.mha`` names the file
itself. A folder of cases runs past a failed case and resumes where an earlier run
stopped (finished cases with unchanged inputs and model are skipped): see
:mod:`ragsam.utils.case_runner`. An existing file that ragsam did not write for
that case is replaced only with ``force`` (checked before any work starts).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ragsam.errors import InputError
from ragsam.inference.run_loader import load_run
from ragsam.utils import ranks
from ragsam.utils.case_runner import CaseRecorder, file_digest, model_key, plan_cases
from ragsam.utils.device import resolve_device
from ragsam.utils.fault_points import pause_at
from ragsam.utils.precision import autocast
from ragsam.utils.threads import apply_threads

IN_FLIGHT = 3  # batches of logits waiting for their labels (bounds memory; the labels thread is the faster)


@dataclass
class Prediction:
    """One written segmentation: case id, output file, slices, organ ids found.

    ``skipped``: the output was already there from an earlier run with the same inputs and model.
    """

    case_id: str
    path: Path
    slices: int
    organs: list[int]
    skipped: bool = False
    seg: Path | None = None  # the DICOM SEG written beside ``path`` (``--output-format both``)


class StageTimes:
    """Busy seconds per pipeline stage, summed over the threads that ran it.

    Stages overlap, so their sum exceeds the wall time by what the overlap saved.
    With ``seconds=None`` nothing is recorded.
    """

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds = seconds

    def timed(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, adding its duration to ``stage``."""
        if self.seconds is None:
            return fn(*args)
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:  # dict += of distinct keys from few threads: the GIL makes each update atomic enough here
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


class InlineExecutor:
    """A stand-in for a one-thread :class:`ThreadPoolExecutor` that runs each task at submit.

    ``overlap=False`` uses it: the same code path, stage by stage in the caller's thread
    (for machines whose cores are all busy, where helper threads only compete).
    """

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # delivered by .result(), as from a thread
            future.set_exception(exc)
        return future


def _executor(overlap: bool, name: str) -> ThreadPoolExecutor | InlineExecutor:
    return ThreadPoolExecutor(1, name) if overlap else InlineExecutor()


def default_overlap(device: torch.device) -> bool:
    """Whether helper threads can run beside the model: on a GPU, or when torch's intra-op
    threads leave a CPU core free (e.g. ``torch.set_num_threads(1)`` on a 2-core machine)."""
    if device.type != "cpu":
        return True
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return torch.get_num_threads() < cores


def split_forward(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """``(body, head)`` with ``head(body(x))`` computing ``model(x)``, operation for operation.

    For a :class:`~ragsam.models.sam.MultiOrganSam` the body ends at the decoder's
    low-resolution logits ``(B, K+1, S/4, S/4)`` and the head is the forward's bilinear
    upsampling to ``(B, K+1, S, S)``, so the upsampling can run beside the next batch's
    encoder. Any other model is all body (identity head).
    """
    from ragsam.models.sam import MultiOrganSam

    if type(model).forward is not MultiOrganSam.forward:
        return model, lambda logits: logits
    return model.low_res_logits, model.upsample


def _batched_logits(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device | None,
                    bf16: bool, cpu_bf16: bool = False) -> Iterator[torch.Tensor]:
    """float32 logits ``(B, K+1, S, S)`` of successive batches of ``images`` (no grad)."""
    device = device or next(model.parameters()).device
    for start in range(0, images.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).float().to(device)
        with autocast(device, bf16, cpu=cpu_bf16):
            logits = model(x)
        yield logits.float()


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: np.ndarray, batch_size: int = 8,
                          device: torch.device | None = None, bf16: bool = True,
                          cpu_bf16: bool = False) -> torch.Tensor:
    """Softmax probabilities of every slice.

    Args:
        model: ``(B, 3, S, S) in [0, 1] -> logits (B, K+1, S, S)``, in eval mode.
        images: float32 ``(Z, 3, S, S)`` model inputs.
        batch_size: slices per forward pass.
        device: where the model runs (default: the model's device).
        bf16: bfloat16 autocast (on CUDA; see :func:`ragsam.utils.precision.uses_bf16`).
        cpu_bf16: also on a CPU with native bf16.
    Returns:
        float32 ``(Z, K+1, S, S)`` probabilities, on ``device`` (kept there for the resize).
    """
    return torch.cat([torch.softmax(logits, dim=1) for logits in _batched_logits(model, images, batch_size,
                                                                                  device, bf16, cpu_bf16)])


@torch.no_grad()
def predict_labels(model: nn.Module, images: np.ndarray, batch_size: int = 8,
                   device: torch.device | None = None, bf16: bool = True, cpu_bf16: bool = False) -> torch.Tensor:
    """Label of every pixel at model size, without keeping any probabilities.

    The argmax of the logits equals the argmax of the softmax, and ``max(dim=1).indices``
    is several times faster than ``argmax`` over the class axis on CPU.

    Args:
        model, images, batch_size, device, bf16, cpu_bf16: as :func:`predict_probabilities`.
    Returns:
        uint8 ``(Z, S, S)`` labels on the CPU.
    """
    return torch.cat([logits.max(dim=1).indices.to(torch.uint8).cpu()
                      for logits in _batched_logits(model, images, batch_size, device, bf16, cpu_bf16)])


def segment_stack(model: nn.Module, stack, batch_size: int = 8, device: torch.device | None = None,
                  bf16: bool = True, cpu_bf16: bool = False, stages: StageTimes | None = None,
                  overlap: bool = True) -> np.ndarray:
    """Labels ``(z, y, x)`` on the original grid for one :class:`~ragsam.data.slices.SliceStack`.

    Three stages overlap: input assembly (thread), ``body`` of :func:`split_forward` (this
    thread), and ``head`` + labels (thread). Labels are those of running ``model`` on
    each slice and reducing as described in the module docstring.

    Args:
        model: as :func:`predict_probabilities` (fewer than 256 classes).
        stack: slices of one volume (``stack.grid.size`` = the model's input size): a
            :class:`~ragsam.data.slices.SliceStack` or :class:`~ragsam.data.slices.LazySlices`.
        batch_size, device, bf16, cpu_bf16: as :func:`predict_probabilities`.
        stages: collects busy seconds of ``inputs`` (with the slices' windowing and resize
            for lazy slices), ``forward``, ``labels``, ``to_volume``.
        overlap: run input assembly and labels in helper threads (False: all in this thread).
    Returns:
        uint8 labels on ``stack.grid.geometry``.
    """
    from ragsam.data.slices import scores_to_labels, slices_to_volume

    stages = stages or StageTimes()
    device = device or next(model.parameters()).device
    depth, height, width = stack.grid.canonical_shape
    same_size = (height, width) == (stack.grid.size, stack.grid.size)
    canon = np.empty((depth, height, width), dtype=np.uint8)
    body, head = split_forward(model)
    # one slice at a time on CPU: its (K+1, S, S) logits stay in cache for the upsampling and argmax
    step = 1 if device.type == "cpu" else batch_size

    def inputs(start: int) -> torch.Tensor:
        return torch.from_numpy(stack.model_inputs(start, start + batch_size, channels=3)).to(device)

    @torch.inference_mode()
    def labels(low: torch.Tensor, start: int) -> None:
        for i in range(0, low.shape[0], step):
            with autocast(device, bf16, cpu=cpu_bf16):  # thread-local: the same context as the forward
                logits = head(low[i:i + step])
            logits = logits.float()
            if same_size:
                lab = logits.max(dim=1).indices.to(torch.uint8)
            else:
                lab = scores_to_labels(torch.softmax(logits, dim=1), (height, width))
            canon[start + i:start + i + lab.shape[0]] = lab.cpu().numpy()

    with _executor(overlap, "ragsam-inputs") as feeder, _executor(overlap, "ragsam-labels") as reducer:
        pending: deque[Future] = deque()
        try:
            batch = feeder.submit(stages.timed, "inputs", inputs, 0)
            for start in range(0, depth, batch_size):
                x = batch.result()
                if start + batch_size < depth:
                    batch = feeder.submit(stages.timed, "inputs", inputs, start + batch_size)
                with torch.inference_mode(), autocast(device, bf16, cpu=cpu_bf16):
                    low = stages.timed("forward", body, x)
                pending.append(reducer.submit(stages.timed, "labels", labels, low, start))
                while len(pending) > IN_FLIGHT or (pending and pending[0].done()):
                    pending.popleft().result()  # raises a failed batch's error here
            while pending:
                pending.popleft().result()
        except BaseException:
            for future in (batch, *pending):
                future.cancel()
            raise
    return stages.timed("to_volume", slices_to_volume, canon, stack.grid)


def _pipeline(todo: list, recorder: CaseRecorder, load: Callable, segment: Callable, write: Callable,
              overlap: bool) -> None:
    """Run the cases of ``todo``: the next one is read ahead and the previous one written behind
    while the current one is segmented; a failure of any stage is recorded for its own case.

    Args:
        load: ``job -> (image, stack)``. segment: ``stack -> labels``. write: ``(job, labels, image)``.
    """
    with _executor(overlap, "ragsam-read") as reader, _executor(overlap, "ragsam-write") as writer:
        loading = reader.submit(load, todo[0]) if todo else None
        writing: tuple[Any, Future] | None = None
        for i, job in enumerate(todo):
            image = labels = None
            try:
                image, stack = loading.result()
            except Exception as exc:  # noqa: BLE001 - reported per case at the end
                recorder.fail(job, exc)
            if i + 1 < len(todo):  # read ahead while this case is segmented
                loading = reader.submit(load, todo[i + 1])
            if image is not None:
                try:
                    labels = segment(stack)
                except Exception as exc:  # noqa: BLE001
                    recorder.fail(job, exc)
            if writing is not None:  # the previous case's write error is recorded before more is queued
                _settle(writing, recorder)
            writing = None if labels is None else (job, writer.submit(write, job, labels, image))
        if writing is not None:
            _settle(writing, recorder)


def _settle(pending: tuple[Any, Future], recorder: CaseRecorder) -> None:
    job, future = pending
    try:
        future.result()
    except Exception as exc:  # noqa: BLE001 - reported per case at the end
        recorder.fail(job, exc)


def _run_label_names(cfg: Any) -> dict[int, str]:
    """``{id: organ name}`` of the run's prepared cache (for a DICOM SEG's segments)."""
    from ragsam.data.cache_meta import CacheMeta

    if not cfg.data.prepared or not Path(cfg.data.prepared).is_dir():
        raise InputError(cfg.data.prepared or None, "the run's prepared cache is not there; a DICOM SEG takes its "
                                                    "organ names from it (write NIfTI with --output-format nifti)")
    return CacheMeta.read(cfg.data.prepared).label_names


def _organs(labels: np.ndarray) -> list[int]:
    """Sorted non-zero label ids present (a histogram: linear time, unlike ``np.unique``)."""
    return [int(v) for v in np.flatnonzero(np.bincount(labels.ravel())) if v != 0]


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict` segments: the settings (the inputs, ``force`` and ``timings`` are per call).

    Attributes:
        batch_size: slices per forward pass.
        device: ``auto`` | ``cpu`` | ``cuda[:N]``.
        series_uid: DICOM series to read when a folder holds several.
        cpu_bf16: bf16 autocast on a CPU with native bf16 (AVX512-BF16 / AMX) when the
            run's ``optim.bf16`` is on; pays for ViT-B, not for small models.
        overlap: overlap the stages in helper threads (see the module docstring). They
            need a free core (or a GPU); ``None`` decides by :func:`default_overlap`. On a
            CPU whose cores are all busy (several predictions at once, a shared machine)
            ``False`` avoids their contention.
        output_format: ``nifti``, ``dicom-seg`` or ``both`` (:mod:`ragsam.data.case_outputs`;
            a SEG needs DICOM series inputs and the run's prepared cache for the label map).
    """

    batch_size: int = 8
    device: str = "auto"
    series_uid: str | None = None
    cpu_bf16: bool = False
    overlap: bool | None = None
    output_format: str = "nifti"


@ranks.fail_together  # torchrun: a rank's failure, wherever it happens, fails every rank
def predict(run_dir: str | os.PathLike, input_path: str | os.PathLike, output_path: str | os.PathLike,
            options: PredictOptions | None = None, force: bool = False, layout: str = "auto",
            timings: dict[str, float] | None = None) -> list[Prediction]:
    """Segment every case of ``input_path`` with the run in ``run_dir``.

    Args:
        run_dir: a finished ``ragsam train`` run.
        input_path: an image file, a DICOM series folder, or a dataset folder
            (any layout :func:`ragsam.data.layouts.discover_cases` understands).
        output_path: output folder (or file, for one case).
        options: batch size, device, series, bf16, overlap, output format (:class:`PredictOptions`;
            default: its defaults).
        force: replace existing outputs (also those of finished cases, which are otherwise skipped).
        layout: dataset layout of ``input_path`` (``auto`` detects it).
        timings: if given, filled with busy seconds per stage (``load_run``, ``read``, ``slice``,
            ``inputs``, ``forward``, ``labels``, ``to_volume``, ``write``; stages overlap,
            so they add up to more than the wall time) and ``wall``.
    Returns:
        One :class:`Prediction` per case, in case-id order.
    Raises:
        InputError / OutputExistsError: bad run, no cases, outputs that are not ragsam's.
        CasesFailedError: after every case ran, when some failed (each one named).
    """
    from ragsam.data.case_outputs import case_outputs, check_seg_inputs, key_parts, write_case, writes_seg
    from ragsam.data.file_checks import check_ct_values
    from ragsam.data.layouts import discover_cases
    from ragsam.data.slices import SliceSettings, lazy_slices
    from ragsam.data.volume import read_image

    wall = time.perf_counter()
    options = options or PredictOptions()
    batch_size, series_uid, cpu_bf16, output_format = (options.batch_size, options.series_uid, options.cpu_bf16,
                                                        options.output_format)
    if batch_size < 1:
        raise InputError(None, f"batch size must be >= 1, got {batch_size}")
    dev = resolve_device(options.device, ranks.local_gpu())  # torchrun: one GPU per local rank
    overlap = default_overlap(dev) if options.overlap is None else options.overlap
    stages = StageTimes(timings)
    label_names = None
    if writes_seg(output_format):  # a SEG's refusals (NIfTI input, anonymised series) before the model loads
        from ragsam.inference.run_loader import read_run_config

        label_names = _run_label_names(read_run_config(run_dir))
        check_seg_inputs(discover_cases(input_path, layout=layout), label_names, output_format, series_uid, run_dir)
    model, cfg = stages.timed("load_run", load_run, run_dir, dev, "model.safetensors", True)
    apply_threads(model)
    if cfg.data.window is None:
        raise InputError(Path(run_dir) / "config.yaml", "data.window is not set (was this run started by ragsam train?)")
    settings = SliceSettings(window=tuple(cfg.data.window), size=cfg.model.image_size, context=cfg.data.context)
    refs = discover_cases(input_path, layout=layout)
    if not refs:
        raise InputError(input_path, "no images found")
    outputs, companions = case_outputs([r.case_id for r in refs], output_path, output_format)
    weights_digest = file_digest(Path(run_dir) / "model.safetensors")
    key = model_key(command="predict", model=weights_digest, config=file_digest(Path(run_dir) / "config.yaml"),
                    bf16=bool(cfg.optim.bf16 and cpu_bf16), **key_parts(output_format))
    plan = plan_cases(refs, outputs, key, force, companions)  # refuses foreign outputs before any work
    recorder = CaseRecorder(plan.case_ids)
    for job, recorded in plan.done:
        recorder.skip(job, Prediction(job.case_id, job.output, int(recorded.get("slices", 0)),
                                      list(recorded.get("organs", [])), skipped=True,
                                      seg=job.companions[0] if job.companions else None))

    def load(job):
        image = stages.timed("read", read_image, job.ref.image, series_uid)
        check_ct_values(image.array, job.ref.image)
        return image, stages.timed("slice", lazy_slices, image, settings)  # slices are prepared per batch

    def segment(stack):
        return segment_stack(model, stack, batch_size, dev, cfg.optim.bf16, cpu_bf16, stages, overlap)

    def write(job, labels, image):
        result = Prediction(job.case_id, job.output, int(labels.shape[0]), _organs(labels),
                            seg=job.companions[0] if job.companions else None)
        recorder.begin(job)
        stages.timed("write", lambda: write_case(
            labels, image, job.output, output_format, force=True, label_names=label_names, series_uid=series_uid,
            algorithm="fine-tuned SAM", model_key=f"run {Path(run_dir).resolve().name} sha256:{weights_digest[:16]}"))
        recorder.finish(job, {"slices": result.slices, "organs": result.organs}, result)
        pause_at("predict:case-written")

    ranks.barrier()  # torchrun: a rank that failed to plan or load stops every rank before any case runs
    todo = ranks.shard_todo(plan.todo, plan.case_ids, ranks.current())  # torchrun: this rank's cases
    _pipeline(todo, recorder, load, segment, write, overlap)
    ranks.merge_outcomes(recorder)
    results = recorder.close()
    if timings is not None:
        timings["wall"] = time.perf_counter() - wall
    return results

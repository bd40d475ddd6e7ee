"""``TrainConfig``: everything a training run needs, saved resolved as ``config.yaml``.

Load with :func:`load_train_config` (defaults <- YAML preset <- ``key=value``
overrides). Defaults follow SAMed / the paper's section 4.2: Dice 0.8 + CE 0.2,
AdamW (0.9, 0.999), weight decay 0.1, base lr 0.005, 250 warm-up iterations,
polynomial decay (power 0.9) over 18,600 iterations, early stop at 14,880.
The rest of SAMed's recipe - the [0, 1] slice without SAM's normalisation, the
loss at the decoder's resolution, fresh mask heads, a trained prompt encoder, 24
slices per step, fp32 - is set by the paper presets (``samed``, ``samed_s``;
``medsa`` for Med-SA), not by these defaults, which stay what runs saved before
those options existed were trained with (docs/paper-fidelity.md).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ragsam.config import load_config
from ragsam.errors import InputError
from ragsam.models.config import HEAD_INITS, NORMALIZATIONS, ModelConfig
from ragsam.training.augment import AugmentConfig

LOSS_RESOLUTIONS = ("low", "full")


@dataclass
class DataConfig:
    """Which slices to train and validate on.

    Args:
        prepared: the prepared slice cache (``ragsam prepare`` output).
        train: split names from ``splits.json`` and/or case ids (quote numeric ids in
            overrides, ``data.train=['0001','0002']``, or YAML reads them as numbers).
        val: split names and/or case ids for validation (whole cases); empty = none.
        holdout: validation slices held out of the TRAINING cases (for tiny data):
            ``""`` none, ``"every:N"`` every N-th slice (z % N == N // 2),
            ``"z:A-B"`` the slice range A..B (inclusive). Held-out slices are never trained on.
        context: 0 = the slice repeated on 3 channels; 1 = (z-1, z, z+1) as channels.
        size: slice size fed to the model; ``None`` = ``model.image_size``.
        window: HU window of the cache (filled in from ``prepare.json``; used by predict).
        num_workers: DataLoader worker processes, which load and augment the batches;
            ``-1`` = auto: ``min(4, cores - 1)`` per process on CUDA, 0 on CPU (see
            :func:`ragsam.training.sampler.resolve_num_workers`). Results do not depend on it.
    """

    prepared: str = ""
    train: list[str] = field(default_factory=lambda: ["train"])
    val: list[str] = field(default_factory=list)
    holdout: str = ""
    context: int = 0
    size: int | None = None
    window: list[float] | None = None
    num_workers: int = -1


@dataclass
class OptimConfig:
    """Optimisation (SAMed defaults).

    Args:
        lr: base learning rate. betas, weight_decay: AdamW.
        warmup: linear warm-up iterations. power: polynomial decay exponent.
        max_iterations: schedule length (optimiser steps).
        stop_iteration: stop here although the schedule runs to ``max_iterations``
            (SAMed/paper: 14,880 of 18,600); ``None`` = ``max_iterations``.
        batch_size: slices per micro-batch per process. grad_accum: micro-batches per step.
        global_batch: slices per optimiser step over all processes; when set,
            ``grad_accum`` is derived as ``global_batch / (batch_size x processes)``
            (:func:`resolve_grad_accum`; SAMed: 24 = 12 per GPU x 2 GPUs, so one
            process accumulates 2 micro-batches). ``None``: ``grad_accum`` as given.
        dice_weight, ce_weight: loss weights. grad_clip: max gradient norm (None = off).
        loss_resolution: ``"low"`` - the loss on the decoder's S/4 logits against the
            nearest-downsampled label (SAMed); ``"full"`` - on the logits upsampled to S.
        bf16: bfloat16 autocast on CUDA GPUs that support it; ``False`` = fp32 everywhere.
        bf16_cpu: opt-in bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX;
            ignored on other CPUs). Measured on a 2-core AVX512-BF16 CPU: 1.6x faster
            SAM ViT-B training steps at 512 px, but 0.82x for the tiny test model
            (see docs/benchmarks.md). Needs ``bf16: true``.
    """

    lr: float = 0.005
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.1
    warmup: int = 250
    power: float = 0.9
    max_iterations: int = 18600
    stop_iteration: int | None = 14880
    batch_size: int = 12
    grad_accum: int = 1
    global_batch: int | None = None
    dice_weight: float = 0.8
    ce_weight: float = 0.2
    grad_clip: float | None = None
    loss_resolution: str = "full"
    bf16: bool = True
    bf16_cpu: bool = False

    @property
    def last_iteration(self) -> int:
        """Number of optimiser steps a run takes when not stopped early (``stop_iteration`` caps it)."""
        stop = self.stop_iteration
        return self.max_iterations if stop is None else min(stop, self.max_iterations)


@dataclass
class ValConfig:
    """Validation: 3D Dice per organ on whole validation cases, averaged.

    Args:
        every: validate every N iterations (and at the end); 0 = only at the end.
        patience: stop after this many validations without improvement; 0 = never.
        batch_size: slices per inference batch.
    """

    every: int = 500
    patience: int = 0
    batch_size: int = 16


@dataclass
class LogConfig:
    """Logging.

    Args:
        every: write a ``log.csv`` row every N iterations.
        tensorboard: also write ``events.*`` when tensorboard is installed.
        progress: show a rich progress bar (rank 0).
        rank_hashes: debug - every rank writes ``debug/rank<R>.json`` with a hash of its
            trainable weights at the end (to check DDP replicas agree).
    """

    every: int = 10
    tensorboard: bool = True
    progress: bool = True
    rank_hashes: bool = False


@dataclass
class TrainConfig:
    """A full training run. Saved resolved as ``<run>/config.yaml``.

    Args:
        data, model, optim, augment, val, log: see the section classes.
        checkpoint_every: write ``checkpoints/state.pt`` every N iterations (and at the end).
        seed: seeds the model initialisation, data order and augmentation.
        device: ``auto`` (CUDA if available) | ``cpu`` | ``cuda`` | ``cuda:N``.
    """

    data: DataConfig = field(default_factory=DataConfig)
    # Without a preset, train what the paper trains: SAMed on the official SAM ViT-B weights.
    model: ModelConfig = field(default_factory=lambda: ModelConfig(weights="facebook/sam-vit-base"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val: ValConfig = field(default_factory=ValConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint_every: int = 500
    seed: int = 1234
    device: str = "auto"

    @property
    def last_iteration(self) -> int:
        """Number of optimiser steps the run takes when not stopped early."""
        return self.optim.last_iteration


RAG_PRESET_PREFIX = "rag_"  # presets of ``ragsam train-rag`` (RagTrainConfig), not of ``ragsam train``


def preset_names(kind: str = "train") -> list[str]:
    """Names of the packaged presets (``ragsam/resources/presets/*.yaml``) of ``ragsam train``
    (``kind="train"``) or of ``ragsam train-rag`` (``kind="rag"``: the ``rag_*`` files)."""
    folder = resources.files("ragsam").joinpath("resources", "presets")
    names = sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
    return [n for n in names if n.startswith(RAG_PRESET_PREFIX) == (kind == "rag")]


def resolve_preset(name_or_path: str | os.PathLike, kind: str = "train") -> Path:
    """A YAML path, or the name of a packaged preset (``samed``, ``tiny``, ...; :func:`preset_names`).

    Presets live inside the package (``ragsam/resources/presets``), so they work from an
    installed wheel. A path that exists but is not a file is refused here, naming it.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.exists() and not path.is_file():
            raise InputError(path, "is a folder, not a YAML configuration file")
        return path
    if str(name_or_path) in preset_names(kind):
        # Packaged data is a real file for a normal (non-zipped) install.
        return Path(str(resources.files("ragsam").joinpath("resources", "presets", f"{name_or_path}.yaml")))
    raise InputError(path, f"no such configuration file or preset (presets: {', '.join(preset_names(kind)) or 'none'})")


def validate(cfg: TrainConfig, source: str = "<config>") -> TrainConfig:
    """Refuse values that cannot work, quoting them."""
    o = cfg.optim
    checks = [
        (o.max_iterations > 0, f"optim.max_iterations={o.max_iterations} must be > 0"),
        (o.stop_iteration is None or o.stop_iteration > 0, f"optim.stop_iteration={o.stop_iteration} must be > 0"),
        (o.batch_size > 0, f"optim.batch_size={o.batch_size} must be > 0"),
        (o.grad_accum > 0, f"optim.grad_accum={o.grad_accum} must be > 0"),
        (o.global_batch is None or o.global_batch > 0, f"optim.global_batch={o.global_batch} must be > 0"),
        (o.loss_resolution in LOSS_RESOLUTIONS, f"optim.loss_resolution={o.loss_resolution!r} is not one of "
                                                 f"{', '.join(LOSS_RESOLUTIONS)}"),
        (cfg.model.normalize in NORMALIZATIONS, f"model.normalize={cfg.model.normalize!r} is not one of "
                                                 f"{', '.join(NORMALIZATIONS)}"),
        (cfg.model.head_init in HEAD_INITS, f"model.head_init={cfg.model.head_init!r} is not one of "
                                            f"{', '.join(HEAD_INITS)}"),
        (o.warmup >= 0, f"optim.warmup={o.warmup} must be >= 0"),
        (math.isfinite(o.lr) and o.lr > 0, f"optim.lr={o.lr} must be a finite number > 0"),
        (len(o.betas) == 2, f"optim.betas={o.betas} must be two numbers"),
        (all(math.isfinite(b) and 0 <= b < 1 for b in o.betas), f"optim.betas={o.betas} must lie in [0, 1)"),
        (math.isfinite(o.weight_decay) and o.weight_decay >= 0,
         f"optim.weight_decay={o.weight_decay} must be a finite number >= 0"),
        (math.isfinite(o.power) and o.power >= 0, f"optim.power={o.power} must be a finite number >= 0"),
        (all(math.isfinite(w) and w >= 0 for w in (o.dice_weight, o.ce_weight)),
         f"optim.dice_weight={o.dice_weight}, optim.ce_weight={o.ce_weight} must be finite numbers >= 0"),
        (o.dice_weight + o.ce_weight > 0, "optim.dice_weight + optim.ce_weight must be > 0"),
        (o.grad_clip is None or (math.isfinite(o.grad_clip) and o.grad_clip > 0),
         f"optim.grad_clip={o.grad_clip} must be a finite number > 0 (or null for none)"),
        (cfg.data.context in (0, 1), f"data.context={cfg.data.context}: SAM takes 3 channels, so context "
                                     "must be 0 (slice repeated) or 1 (z-1, z, z+1)"),
        (cfg.data.num_workers >= -1, f"data.num_workers={cfg.data.num_workers} must be >= 0, or -1 for auto"),
        (cfg.checkpoint_every > 0, f"checkpoint_every={cfg.checkpoint_every} must be > 0"),
        (cfg.val.every >= 0, f"val.every={cfg.val.every} must be >= 0"),
        (cfg.log.every > 0, f"log.every={cfg.log.every} must be > 0"),
    ]
    for ok, problem in checks:
        if not ok:
            raise InputError(source, problem)
    return cfg


def resolve_grad_accum(optim: OptimConfig, processes: int, source: str = "<config>") -> int:
    """Micro-batches per optimiser step for ``processes`` processes.

    With ``optim.global_batch`` set: ``global_batch / (batch_size x processes)``,
    which must be a whole number; an explicit ``grad_accum`` other than 1 must
    agree with it. Without: ``optim.grad_accum``.

    Raises:
        InputError: a global batch the processes cannot split evenly, or a disagreement.
    """
    if optim.global_batch is None:
        return optim.grad_accum
    per_step = optim.batch_size * processes
    accum, rest = divmod(optim.global_batch, per_step)
    if rest or accum < 1:
        raise InputError(source, f"optim.global_batch={optim.global_batch} is not a multiple of "
                                 f"optim.batch_size={optim.batch_size} x {processes} process(es)")
    if optim.grad_accum not in (1, accum):
        raise InputError(source, f"optim.grad_accum={optim.grad_accum} disagrees with optim.global_batch="
                                 f"{optim.global_batch} (= {optim.batch_size} x {processes} x {accum}); set one")
    return accum


def load_train_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file or preset name <- ``key=value`` overrides, validated."""
    resolved = None if path is None else resolve_preset(path)
    if resolved is not None and overrides:  # the file alone first, so an error names what is at fault
        validate(load_config(TrainConfig, resolved), str(resolved))
    cfg = load_config(TrainConfig, resolved, overrides)
    return validate(cfg, "<command line>" if overrides or resolved is None else str(resolved))

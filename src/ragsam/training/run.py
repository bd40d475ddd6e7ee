"""``train(cfg, out)``: set up a run folder, data, model and optimiser, then loop.

Run folder::

    config.yaml            the resolved TrainConfig (its ``model:`` section is a ModelConfig)
    model.safetensors      trainable tensors of the best validation (or the last) iteration
    last.safetensors       trainable tensors at the end of training
    checkpoints/state.pt   resumable state (atomic, every ``checkpoint_every`` iterations)
    log.csv                iteration, epoch, lr, losses, validation Dice, seconds
    val.json               every validation (per case and organ) and the best one
    events.out.tfevents.*  TensorBoard scalars (when tensorboard is installed)

A fresh run refuses a non-empty folder unless ``force``; ``resume`` continues from
``state.pt`` with the folder's own ``config.yaml`` (or starts again from iteration 0 when
the run was stopped before its first checkpoint). Where a run writes, and how ``--force``
replaces a previous run only once the new one has finished, is
:mod:`ragsam.training.run_folder`; the folder's lock (:mod:`ragsam.utils.locking`) keeps a
second ``train`` out of it.

``ragsam train`` and ``ragsam train-rag`` share this whole lifecycle; what differs (the
configuration class, data, model, the loss of a micro-batch, validation, which tensors
are saved) is a :class:`TrainingTask` (``SAM_TASK`` here, ``RAG_TASK`` in
:mod:`ragsam.training.rag_run`).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragsam.config import dump_config, to_dict
from ragsam.errors import InputError
from ragsam.training.checkpoint import STATE_FILE, load_state
from ragsam.training.config import TrainConfig, load_train_config, resolve_grad_accum, validate
from ragsam.training.data import build_data
from ragsam.training.distributed import DistInfo, barrier, cleanup, setup
from ragsam.training.logging_utils import NullLogger, RunLogger
from ragsam.training.loop import LoopContext, LoopState, restore_loop_state, run_loop
from ragsam.training.run_folder import RunFolder, clear_run_files, plan_folder, publish
from ragsam.training.run_info import CONFIG_FILE, RunInfo
from ragsam.training.sampler import BatchStream, resolve_num_workers
from ragsam.training.schedule import WarmupPoly
from ragsam.utils.atomic import write_json, write_text
from ragsam.utils.locking import folder_lock
from ragsam.utils.seeding import seed_everything
from ragsam.utils.threads import apply_threads

# Keys that may differ between a run's config.yaml and the config given with --resume.
RESUME_FREE = ("data.prepared", "data.num_workers", "log.", "device", "val.batch_size")


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def requested_config(config: str | Path | None, overrides: list[str], out: str | Path,
                     resume: bool, load: Callable[..., Any] | None = None) -> Any:
    """The configuration a ``train`` / ``train-rag`` request gives :func:`train` (the one place that decides it).

    ``load(path_or_preset, overrides)`` reads a configuration (default
    :func:`~ragsam.training.config.load_train_config`; ``train-rag`` passes ``load_rag_config``).

    A new run: ``config`` (a preset name or YAML file) plus ``overrides``. ``--resume``
    without ``config``: the run's own ``config.yaml`` plus ``overrides`` (only harmless
    keys may change; :func:`train` checks), or ``None`` without overrides or before the
    run wrote its ``config.yaml`` (:func:`train` then reads the saved one, or asks for
    ``--config`` again).
    """
    load = load or load_train_config
    if resume and config is None:
        saved = Path(out) / CONFIG_FILE
        return load(saved, overrides) if overrides and saved.is_file() else None
    return load(config, overrides)


@dataclass(frozen=True)
class TrainingTask:
    """What a kind of training run brings to the shared lifecycle and loop.

    Attributes:
        config_cls: the configuration dataclass saved as ``config.yaml``.
        filled: keys the run fills in at start (unset in a fresh configuration, so a
            ``--resume`` with the original configuration still matches).
        validate: refuses impossible configurations.
        build_data: ``(cfg, info) -> data`` with ``dataset``, ``train_indices``, ``val_cases``.
        build_model: ``(cfg, data, info) -> module`` on ``info.device``, ``requires_grad`` set.
        saved_module: the part of the module whose trainable tensors the weight files hold.
        metadata: ``(cfg, data) -> {str: str}`` stored in the weight files.
        augment: ``cfg -> AugmentConfig | None`` for the batch stream.
        step: the loss of one micro-batch (``None``: :func:`ragsam.training.loop.sam_step`).
        validator: ``(module, data, info) -> ValResult`` (``None``: the slice model's validation).
    """

    config_cls: type
    filled: tuple[str, ...]
    validate: Callable[[Any], Any]
    build_data: Callable[[Any, DistInfo], Any]
    build_model: Callable[[Any, Any, DistInfo], nn.Module]
    saved_module: Callable[[nn.Module], nn.Module]
    metadata: Callable[[Any, Any], dict[str, str]]
    augment: Callable[[Any], Any]
    step: Callable[..., Any] | None = None
    validator: Callable[[nn.Module, Any, DistInfo], Any] | None = None


def _build_sam(cfg: TrainConfig, data: Any, info: DistInfo) -> nn.Module:
    from ragsam.models import build_model

    return build_model(cfg.model).to(info.device)


SAM_TASK = TrainingTask(
    config_cls=TrainConfig, filled=("data.window", "data.size"), validate=validate,
    build_data=lambda cfg, info: build_data(cfg), build_model=_build_sam, saved_module=lambda m: m,
    metadata=lambda cfg, data: {"format": "ragsam-run", "arch": cfg.model.arch,
                                "num_classes": str(cfg.model.num_classes), "image_size": str(cfg.model.image_size)},
    augment=lambda cfg: cfg.augment)


def resume_config(run_dir: Path, given: Any, task: TrainingTask = SAM_TASK) -> Any:
    """The run's saved configuration; ``given`` (if any) may differ only in harmless keys."""
    saved = RunInfo.read_config(run_dir, task.config_cls)
    if given is None:
        return saved
    a, b = _flat(to_dict(saved)), _flat(to_dict(given))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUME_FREE)
            and not (k in task.filled and b.get(k) is None)]
    if diff:
        raise InputError(run_dir / "config.yaml", f"--resume with a different configuration ({', '.join(diff[:6])}); "
                         "resume with the run's own config (omit --config/overrides) or start a new run")
    for key in ("prepared", "num_workers"):
        setattr(saved.data, key, getattr(given.data, key))
    saved.log, saved.device, saved.val.batch_size = given.log, given.device, given.val.batch_size
    return saved


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train(cfg: TrainConfig | None, out: str | Path, *, resume: bool = False, force: bool = False,
          stop_after: int | None = None, task: TrainingTask = SAM_TASK) -> Path:
    """Train (or resume) a run and return its folder.

    Args:
        cfg: the configuration (``None`` with ``resume``: the run's own ``config.yaml``).
        out: run folder.
        resume: continue from ``<out>/checkpoints/state.pt`` exactly where it stopped (from
            iteration 0 when the run has no checkpoint yet).
        force: start afresh over a previous run, which is replaced once the new one finishes.
        stop_after: testing hook simulating a kill after this iteration (no final outputs).
        task: what is trained (``SAM_TASK``: ``ragsam train``).
    Returns:
        The run folder.
    Raises:
        InputError / OutputExistsError: see :func:`ragsam.training.data.build_data` and
            :func:`ragsam.training.run_folder.plan_folder`.
        FolderLockedError: another process is writing ``out``.
    """
    run_dir = Path(out)
    if resume and force:
        raise InputError(run_dir, "--resume and --force contradict each other; choose one")
    if cfg is None and not resume:
        raise InputError(None, "a configuration is needed to start a new run")
    info = setup(cfg.device if cfg is not None else _saved_device(run_dir, task.config_cls))
    try:
        with folder_lock(run_dir, enabled=info.is_main):
            folder = plan_folder(run_dir, resume, force, have_config=cfg is not None, cleanup=info.is_main)
            barrier(info)  # every rank has looked at the folder before rank 0 writes to it
            if folder.saved_config:
                cfg = resume_config(run_dir, cfg, task)
            assert cfg is not None
            try:
                _train_in(cfg, folder, info, stop_after, task)
            except BaseException:
                if folder.replaces and info.is_main:
                    shutil.rmtree(folder.work, ignore_errors=True)  # a refused forced run leaves nothing
                raise
        return run_dir
    finally:
        cleanup(info)


def _saved_device(run_dir: Path, config_cls: type = TrainConfig) -> str:
    try:
        return RunInfo.read_config(run_dir, config_cls).device
    except Exception:  # noqa: BLE001 - reported properly once the folder is planned
        return "auto"


def _train_in(cfg: Any, folder: RunFolder, info: DistInfo, stop_after: int | None, task: TrainingTask) -> None:
    """Build data, model and optimiser, run the loop in ``folder.work``, publish a forced run."""
    from ragsam.peft.apply import save_trainable

    run_dir = folder.work
    task.validate(cfg)
    cfg.optim.grad_accum = resolve_grad_accum(cfg.optim, info.world)  # saved resolved in config.yaml
    data = task.build_data(cfg, info)
    state = load_state(run_dir / STATE_FILE) if folder.resume else None
    if state is None and info.is_main:
        # Iteration 0: whatever a stopped attempt logged is redone; config.yaml comes first.
        clear_run_files(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", dump_config(cfg), force=True)
    barrier(info)
    seed_everything(cfg.seed)
    model = task.build_model(cfg, data, info)
    apply_threads(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise InputError(None, "the model has no trainable parameters (check model.peft)")
    o = cfg.optim
    schedule = WarmupPoly(o.lr, o.warmup, o.max_iterations, o.power)
    optimizer = torch.optim.AdamW(trainable, lr=schedule.lr_at(0), betas=tuple(o.betas),
                                  weight_decay=o.weight_decay)
    on_cuda = info.device.type == "cuda"
    stream = BatchStream(data.dataset, data.train_indices, o.batch_size, cfg.seed, info.rank, info.world,
                         resolve_num_workers(cfg.data.num_workers, info.device), augment=task.augment(cfg),
                         pin_memory=on_cuda)
    st = LoopState()
    if state is not None:
        st = restore_loop_state(state, run_dir / STATE_FILE, model, optimizer, stream, schedule)
    ddp = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if on_cuda else None
        ddp = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    logger = (RunLogger(run_dir, st.iteration, cfg.last_iteration, cfg.log.tensorboard, cfg.log.progress)
              if info.is_main else NullLogger())
    meta_base = task.metadata(cfg, data)

    def save_weights(path: Path, extra: dict[str, str]) -> None:
        save_trainable(task.saved_module(model), path, {**meta_base, **extra})

    def write_val(s: LoopState) -> None:
        RunInfo(best_iteration=s.best_iteration, best_dice=s.best_score, history=s.history).write_val(run_dir)

    validator = None if task.validator is None else (lambda: task.validator(model, data, info))
    ctx = LoopContext(cfg, run_dir, info, ddp, model, optimizer, schedule, stream, data.dataset,
                      data.val_cases, logger, save_weights, write_val, step=task.step, validator=validator)
    try:
        st = run_loop(ctx, st, stop_after=stop_after)
    finally:
        logger.close()
        stream.close()
    if st.done:
        if info.is_main:
            save_weights(run_dir / "last.safetensors", {"iteration": str(st.iteration), "selected": "last"})
            if not data.val_cases or not (run_dir / "model.safetensors").is_file():
                save_weights(run_dir / "model.safetensors", {"iteration": str(st.iteration), "selected": "last"})
            write_val(st)
        if cfg.log.rank_hashes:
            write_json(run_dir / "debug" / f"rank{info.rank}.json",
                       {"rank": info.rank, "world": info.world, "iteration": st.iteration,
                        "sha256": weights_hash(task.saved_module(model))}, force=True)
    barrier(info)
    if st.done and info.is_main:
        publish(folder)

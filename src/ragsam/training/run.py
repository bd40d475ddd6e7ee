"""``train(cfg, out)``: set up a run folder, data, model and optimiser, then loop.

Run folder::

    config.yaml            the resolved TrainConfig (its ``model:`` section is a ModelConfig)
    model.safetensors      trainable tensors of the best validation (or the last) iteration
    last.safetensors       trainable tensors at the end of training
    checkpoints/state.pt   resumable state (atomic, every ``checkpoint_every`` iterations)
    log.csv                iteration, epoch, lr, losses, validation Dice, seconds
    val.json               every validation (per case and organ) and the best one
    events.out.tfevents.*  TensorBoard scalars (when tensorboard is installed)

A fresh run refuses a non-empty folder unless ``force`` (which removes the run
files listed above, nothing else); ``resume`` continues from ``state.pt`` with
the folder's own ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ragsam.config import dump_config, load_config, to_dict
from ragsam.errors import InputError, OutputExistsError
from ragsam.training.checkpoint import STATE_FILE, load_state
from ragsam.training.config import TrainConfig, validate
from ragsam.training.data import build_data
from ragsam.training.distributed import DistInfo, barrier, cleanup, setup
from ragsam.training.logging_utils import NullLogger, RunLogger
from ragsam.training.loop import LoopContext, LoopState, restore_loop_state, run_loop
from ragsam.training.sampler import BatchStream, resolve_num_workers
from ragsam.training.schedule import WarmupPoly
from ragsam.utils.atomic import write_json, write_text
from ragsam.utils.seeding import seed_everything

RUN_FILES = ("config.yaml", "model.safetensors", "last.safetensors", "log.csv", "val.json")
RUN_DIRS = ("checkpoints", "debug")
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


def prepare_run_folder(run_dir: Path, resume: bool, force: bool, info: DistInfo) -> None:
    """A fresh run needs an empty folder (or ``force``, which removes only the run files)."""
    if resume:
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        if not force:
            raise OutputExistsError(run_dir)
        if info.is_main:
            for name in RUN_FILES:
                (run_dir / name).unlink(missing_ok=True)
            for name in RUN_DIRS:
                shutil.rmtree(run_dir / name, ignore_errors=True)
            for ev in run_dir.glob("events.out.tfevents.*"):
                ev.unlink()
    barrier(info)


def resume_config(run_dir: Path, given: Any, cls: type = TrainConfig,
                  filled: tuple[str, ...] = ("data.window", "data.size")) -> Any:
    """The run's saved configuration; ``given`` (if any) may differ only in harmless keys.

    ``filled``: keys the run fills in at start (unset in a fresh configuration).
    """
    saved = load_config(cls, run_dir / "config.yaml")
    if given is None:
        return saved
    a, b = _flat(to_dict(saved)), _flat(to_dict(given))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and not k.startswith(RESUME_FREE)
            and not (k in filled and b.get(k) is None)]
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
          stop_after: int | None = None) -> Path:
    """Train (or resume) a run and return its folder.

    Args:
        cfg: the configuration (``None`` with ``resume``: the run's own ``config.yaml``).
        out: run folder.
        resume: continue from ``<out>/checkpoints/state.pt`` exactly where it stopped.
        force: start afresh in a non-empty folder (removes the previous run's files).
        stop_after: testing hook simulating a kill after this iteration (no final outputs).
    Returns:
        The run folder.
    Raises:
        InputError / OutputExistsError: see :func:`ragsam.training.data.build_data` and above.
    """
    from ragsam.models import build_model, save_trainable

    run_dir = Path(out)
    if cfg is None and not resume:
        raise InputError(None, "a configuration is needed to start a new run")
    if resume and force:
        raise InputError(run_dir, "--resume and --force contradict each other; choose one")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise InputError(run_dir, "not a ragsam run folder (no config.yaml) - cannot --resume")
        cfg = resume_config(run_dir, cfg)
    assert cfg is not None
    info = setup(cfg.device)
    try:
        prepare_run_folder(run_dir, resume, force, info)
        validate(cfg)
        data = build_data(cfg)
        state = load_state(run_dir / STATE_FILE) if resume else None
        seed_everything(cfg.seed)
        model = build_model(cfg.model).to(info.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise InputError(None, "the model has no trainable parameters (check model.peft)")
        o = cfg.optim
        schedule = WarmupPoly(o.lr, o.warmup, o.max_iterations, o.power)
        optimizer = torch.optim.AdamW(trainable, lr=schedule.lr_at(0), betas=tuple(o.betas),
                                      weight_decay=o.weight_decay)
        on_cuda = info.device.type == "cuda"
        stream = BatchStream(data.dataset, data.train_indices, o.batch_size, cfg.seed, info.rank, info.world,
                             resolve_num_workers(cfg.data.num_workers, info.device), augment=cfg.augment,
                             pin_memory=on_cuda)
        st = LoopState()
        if state is not None:
            st = restore_loop_state(state, run_dir / STATE_FILE, model, optimizer, stream, schedule)
        elif info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", dump_config(cfg), force=True)
        barrier(info)
        ddp = model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [info.device.index] if on_cuda else None
            ddp = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        logger = (RunLogger(run_dir, st.iteration, cfg.last_iteration, cfg.log.tensorboard, cfg.log.progress)
                  if info.is_main else NullLogger())
        meta_base = {"format": "ragsam-run", "arch": cfg.model.arch, "num_classes": str(cfg.model.num_classes),
                     "image_size": str(cfg.model.image_size)}

        def save_weights(path: Path, extra: dict[str, str]) -> None:
            save_trainable(model, path, {**meta_base, **extra})

        def write_val(s: LoopState) -> None:
            write_json(run_dir / "val.json", {"best": {"iteration": s.best_iteration, "mean_dice": s.best_score},
                                              "history": s.history}, force=True)

        ctx = LoopContext(cfg, run_dir, info, ddp, model, optimizer, schedule, stream, data.dataset,
                          data.val_cases, logger, save_weights, write_val)
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
                            "sha256": weights_hash(model)}, force=True)
        barrier(info)
        return run_dir
    finally:
        cleanup(info)


def read_val(run_dir: str | Path) -> dict:
    """``val.json`` of a run (empty dict when there is none)."""
    path = Path(run_dir) / "val.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

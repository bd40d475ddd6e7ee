"""``train_rag(cfg, out)``: episodic fine-tuning of SAM 2 for retrieval (``ragsam train-rag``).

The run folder has the layout of ``ragsam train``'s (:mod:`ragsam.training.run`):
``config.yaml`` (resolved :class:`~ragsam.training.rag_config.RagTrainConfig`),
``model.safetensors`` (trainable tensors of the best validation, or the last,
iteration; metadata ``format: ragsam-rag-run``), ``last.safetensors``,
``checkpoints/state.pt``, ``log.csv``, ``val.json``. It runs the same loop
(:func:`~ragsam.training.loop.run_loop`), schedule, data stream, checkpoints,
torchrun DDP, bf16 rule and early stopping; only the micro-batch loss
(:func:`episode_step`) and the validation (:func:`~ragsam.training.rag_validate.validate_rag`) differ.

The loss is the paper's ``0.8 * Dice + 0.2 * CE`` on the class logits of
:class:`~ragsam.training.rag_model.RagEpisodeModel`, computed per episode and
averaged over the micro-batch: each episode has its own organs, and a per-episode
mean makes ``W`` processes of ``B`` episodes the same step as one process of
``W * B`` (DDP averages the ranks' gradients).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragsam.config import dump_config
from ragsam.errors import InputError
from ragsam.training.checkpoint import STATE_FILE, load_state
from ragsam.training.distributed import DistInfo, barrier, cleanup, setup
from ragsam.training.logging_utils import NullLogger, RunLogger
from ragsam.training.loop import LoopContext, LoopState, restore_loop_state, run_loop
from ragsam.training.losses import DiceCELoss, LossParts
from ragsam.training.rag_config import RagTrainConfig, validate_rag
from ragsam.training.rag_model import RUN_FORMAT, build_rag_model
from ragsam.training.run import prepare_run_folder, resume_config, weights_hash
from ragsam.training.sampler import Batch, BatchStream, resolve_num_workers
from ragsam.training.schedule import WarmupPoly
from ragsam.utils.atomic import write_json, write_text
from ragsam.utils.precision import autocast
from ragsam.utils.seeding import seed_everything


def episode_step(model: nn.Module, batch: Batch, info: DistInfo, loss_fn: DiceCELoss, optim: Any) -> LossParts:
    """Mean per-episode Dice + CE of one micro-batch ``(B, 1 + k, S, S)`` (see module docstring)."""
    images = batch.images.to(info.device, non_blocking=True)
    labels = batch.labels.to(info.device, non_blocking=True)
    with autocast(info.device, optim.bf16, cpu=optim.bf16_cpu):
        logits = model(images, labels)
    parts = [loss_fn.parts(logits[i:i + 1].float(), labels[i:i + 1, 0]) for i in range(logits.shape[0])]
    n = len(parts)
    return LossParts(sum(p.total for p in parts) / n, sum(p.dice for p in parts) / n,  # type: ignore[arg-type]
                     sum(p.ce for p in parts) / n)  # type: ignore[arg-type]


def train_rag(cfg: RagTrainConfig | None, out: str | Path, *, resume: bool = False, force: bool = False,
              stop_after: int | None = None) -> Path:
    """Train (or resume) an episodic SAM 2 run and return its folder.

    Args:
        cfg: the configuration (``None`` with ``resume``: the run's own ``config.yaml``).
        out: run folder. resume / force / stop_after: as :func:`ragsam.training.train`.
    Raises:
        InputError / OutputExistsError: bad bank, cases or settings; an existing folder without ``force``.
    """
    from ragsam.peft.apply import save_trainable
    from ragsam.training.rag_data import build_episodes
    from ragsam.training.rag_validate import validate_rag as validate_episodes

    run_dir = Path(out)
    if cfg is None and not resume:
        raise InputError(None, "a configuration is needed to start a new run")
    if resume and force:
        raise InputError(run_dir, "--resume and --force contradict each other; choose one")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise InputError(run_dir, "not a ragsam run folder (no config.yaml) - cannot --resume")
        cfg = resume_config(run_dir, cfg, RagTrainConfig, filled=("model.num_classes",))
    assert cfg is not None
    info = setup(cfg.device)
    try:
        prepare_run_folder(run_dir, resume, force, info)
        validate_rag(cfg)
        data = build_episodes(cfg, device=str(info.device))
        state = load_state(run_dir / STATE_FILE) if resume else None
        seed_everything(cfg.seed)
        model = build_rag_model(cfg, info.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise InputError(None, "the model has no trainable parameters (check model.peft)")
        o = cfg.optim
        schedule = WarmupPoly(o.lr, o.warmup, o.max_iterations, o.power)
        optimizer = torch.optim.AdamW(trainable, lr=schedule.lr_at(0), betas=tuple(o.betas),
                                      weight_decay=o.weight_decay)
        on_cuda = info.device.type == "cuda"
        stream = BatchStream(data.dataset, data.train_indices, o.batch_size, cfg.seed, info.rank, info.world,
                             resolve_num_workers(cfg.data.num_workers, info.device), augment=None,
                             pin_memory=on_cuda)
        st = LoopState()
        if state is not None:
            st = restore_loop_state(state, run_dir / STATE_FILE, model, optimizer, stream, schedule)
        elif info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", dump_config(cfg), force=True)
        barrier(info)
        ddp: nn.Module = model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [info.device.index] if on_cuda else None
            ddp = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        logger = (RunLogger(run_dir, st.iteration, cfg.last_iteration, cfg.log.tensorboard, cfg.log.progress)
                  if info.is_main else NullLogger())
        meta_base = {"format": RUN_FORMAT, "sam2": cfg.model.weights, "num_classes": str(data.num_classes),
                     "k": str(cfg.data.k)}

        def save_weights(path: Path, extra: dict[str, str]) -> None:
            save_trainable(model.sam2, path, {**meta_base, **extra})

        def write_val(s: LoopState) -> None:
            write_json(run_dir / "val.json", {"best": {"iteration": s.best_iteration, "mean_dice": s.best_score},
                                              "history": s.history}, force=True)

        ctx = LoopContext(cfg, run_dir, info, ddp, model, optimizer, schedule, stream, data.dataset,  # type: ignore[arg-type]
                          data.val_cases, logger, save_weights, write_val, step=episode_step,
                          validator=lambda: validate_episodes(model, data, info))
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
                            "sha256": weights_hash(model.sam2)}, force=True)
        barrier(info)
        return run_dir
    finally:
        cleanup(info)

"""The tiny version of a training preset (``ragsam experiment --tiny``): the recipe kept, the model shrunk.

A ``--tiny`` plan shows the protocol running on a CPU in minutes. Each finetune variant keeps
its preset's recipe -- PEFT method and what trains, normalisation, head start, loss (terms,
weights, resolution), optimiser (betas, weight decay), schedule shape (warm-up and early stop as
fractions of the run, decay power), precision and augmentation -- and changes only what cannot
carry over to a tiny model on a phantom:

* the model: the ``tiny`` architecture at 64 px, starting from ragsam's shipped pre-trained tiny
  SAM (:mod:`ragsam.hub.tiny_models`). PEFT adapts a pretrained model: on a random, frozen
  encoder LoRA and adapters have nothing to adapt, which is why these rows scored 0.000 before;
* the budget: :data:`TINY_ITERATIONS` steps of at most :data:`TINY_BATCH` slices (the recipe's
  smaller batch is kept);
* the learning rate: at least :data:`TINY_MIN_LR` (Med-SA's 1e-4 moves a tiny model too little
  in a few hundred steps).

The numbers then show each recipe learning, not its accuracy on CT (docs/paper-fidelity.md).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragsam.training.config import TrainConfig

#: Optimiser steps of a tiny finetune variant.
TINY_ITERATIONS = 300
#: Most slices per step (the recipe's own batch when smaller).
TINY_BATCH = 8
#: Lowest peak learning rate of a tiny variant.
TINY_MIN_LR = 0.002
#: Slice side (px): the shipped tiny SAM's pre-training size.
TINY_SIZE = 64


def _scaled(steps: int | None, recipe_length: int, length: int) -> int | None:
    """``steps`` of a ``recipe_length``-step run at the same fraction of a ``length``-step run (>= 1 if > 0)."""
    if steps is None:
        return None
    return 0 if steps == 0 else max(1, round(steps * length / recipe_length))


def tiny_recipe(recipe: TrainConfig, sam_weights: str) -> TrainConfig:
    """``recipe`` (a resolved training preset) on the tiny SAM ``sam_weights`` with the tiny budget.

    Returns:
        The configuration with ``model.arch = "tiny"``, ``model.weights = sam_weights``,
        ``model.image_size = 64``, :data:`TINY_ITERATIONS` steps (``optim.warmup`` and
        ``optim.stop_iteration`` at the recipe's fractions of its run), ``optim.batch_size =
        min(recipe batch, TINY_BATCH)`` in one micro-batch, ``optim.lr = max(recipe lr,
        TINY_MIN_LR)``, no validation and a checkpoint every 50 steps; the rest is the recipe's.
    """
    recipe = copy.deepcopy(recipe)  # the result shares nothing with the caller's configuration
    o = recipe.optim
    batch = min(o.global_batch or o.batch_size * o.grad_accum, TINY_BATCH)
    n = TINY_ITERATIONS
    optim = replace(o, lr=max(o.lr, TINY_MIN_LR), max_iterations=n, warmup=_scaled(o.warmup, o.max_iterations, n),
                    stop_iteration=_scaled(o.stop_iteration, o.max_iterations, n), batch_size=batch, grad_accum=1,
                    global_batch=None)
    model = replace(recipe.model, arch="tiny", weights=sam_weights, image_size=TINY_SIZE)
    return replace(recipe, model=model, optim=optim, val=replace(recipe.val, every=0), checkpoint_every=50,
                   log=replace(recipe.log, every=max(1, n // 20)))

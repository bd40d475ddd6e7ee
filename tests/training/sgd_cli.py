"""``python tests/training/sgd_cli.py ARGS``: the ragsam command line with plain SGD in place of AdamW.

Test helper for equality tests of the training loop (e.g. torchrun DDP == one process): AdamW
divides each gradient element by its own running size, so an element whose gradient is
float rounding noise (mathematically zero, e.g. attention key biases) still moves by a full
learning-rate step, and two runs that differ only in summation order drift apart by up to
``2 * lr`` per step. SGD moves every element by ``lr * gradient``: rounding stays rounding.
:func:`use_sgd` swaps the optimiser class ``ragsam.training.run`` builds (``torch.optim.AdamW``);
the returned function undoes it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch


def _sgd(params, lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0):
    """AdamW's signature as ragsam calls it -> SGD (no momentum) with the same lr and weight decay."""
    del betas
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def use_sgd() -> Callable[[], None]:
    """Make ``torch.optim.AdamW`` build SGD; returns the function that restores AdamW."""
    original = torch.optim.AdamW
    torch.optim.AdamW = _sgd  # type: ignore[assignment,misc]

    def restore() -> None:
        torch.optim.AdamW = original  # type: ignore[misc]

    return restore


if __name__ == "__main__":
    use_sgd()
    from ragsam.cli.main import main

    sys.argv = ["ragsam", *sys.argv[1:]]
    main()

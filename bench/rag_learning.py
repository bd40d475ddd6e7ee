"""Training-free vs episodically fine-tuned retrieval (``ragsam train-rag``): held-out Dice per organ.

Data (``--data``):

* ``real-ct``: the two abdominal CT cases of ``tests/assets/real-ct`` (BTCV labels), sliced at
  ``--size`` px. One case's slices are the training queries, the other case is the held-out
  test; both directions are run. The bank holds both cases (supports are always retrieved
  from the *other* case: a query's own case is excluded), so the test case's label maps
  are seen during training as support masks (inputs), never as targets.
* ``phantom``: ``--cases`` synthetic phantoms; the last is held out, the others train.

For each direction: 3D Dice per organ (validation slices stacked, on the prepared grid) of
the retrieval segmenter before training (training-free SAM 2) and after ``--iterations``
steps of ``train-rag`` (same retrieval, same k, same bank). ``--models random``: the tiny
randomly initialised SAM 2 and embedder (a rise shows the episodic training path learning);
``--models pretrained``: ragsam's shipped tiny models (``ragsam/resources/tiny_models``,
pre-trained on synthetic phantoms only), what the demo uses. Neither says what real SAM 2
weights would reach on CT.

Example:
    python bench/rag_learning.py --data real-ct --json bench/results/rag_learning_ct.json
    python bench/rag_learning.py --data real-ct --models pretrained --peft lora --iterations 60
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine  # noqa: E402
from modes import load_average  # noqa: E402

REAL_CT = Path(__file__).resolve().parents[1] / "tests" / "assets" / "real-ct"


def _weights(models: str) -> tuple[str, str, int]:
    """``(sam2 weights, embedder weights, embedder input side)`` of ``--models``."""
    if models == "random":
        return "tiny", "tiny", 56
    from ragsam.hub.tiny_models import tiny_models

    shipped = tiny_models()
    return str(shipped.sam2), str(shipped.embedder), shipped.embedder_image_size


def _dataset(kind: str, work: Path, size: int, cases: int, models: str) -> tuple[Path, list[tuple[list[str], str]]]:
    """Prepared cache + bank; the (train cases, test case) directions."""
    from ragsam.data.phantom import write_phantom_dataset
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slices import SliceSettings
    from ragsam.retrieval.bank import BankOptions, build_bank

    if kind == "real-ct":
        source = REAL_CT
    else:
        source = work / "phantom"
        write_phantom_dataset(source, n_cases=cases, shape=(16, 64, 64), spacing_mm=(8.0, 6.0, 6.0), seed=7)
    summary = prepare_dataset(source, work / "prep", PrepareOptions(settings=SliceSettings(size=size),
                              label_map="btcv", split="none"))
    ids = sorted(summary.cases)
    _, embedder, embedder_size = _weights(models)
    build_bank(work / "prep", work / "bank", BankOptions(embedder_weights=embedder, image_size=embedder_size))
    if kind == "real-ct":
        return work / "bank", [([ids[0]], ids[1]), ([ids[1]], ids[0])]
    return work / "bank", [(ids[:-1], ids[-1])]


def run_direction(bank: Path, train: list[str], test: str, args, work: Path) -> dict:
    from ragsam.training.distributed import setup
    from ragsam.training.rag_config import load_rag_config
    from ragsam.training.rag_data import build_episodes
    from ragsam.training.rag_model import build_rag_model
    from ragsam.training.rag_run import train_rag
    from ragsam.training.rag_validate import validate_rag
    from ragsam.utils.seeding import seed_everything

    listed = ",".join(f"'{c}'" for c in train)
    overrides = [f"data.bank={bank}", f"data.train=[{listed}]", f"data.val=['{test}']", f"data.k={args.k}",
                 f"model.weights={_weights(args.models)[0]}", f"model.peft.method={args.peft}", f"optim.max_iterations={args.iterations}",
                 f"optim.batch_size={args.batch}", f"optim.lr={args.lr}", "optim.warmup=5", "optim.grad_clip=1.0",
                 "val.every=0", f"checkpoint_every={args.iterations}", "device=cpu", "log.progress=false",
                 "log.tensorboard=false", f"seed={args.seed}"]
    cfg = load_rag_config("rag_tiny", overrides)
    data = build_episodes(cfg)
    seed_everything(cfg.seed)
    before = validate_rag(build_rag_model(cfg), data, setup("cpu"))
    start = time.perf_counter()
    run = train_rag(load_rag_config("rag_tiny", overrides), work / f"run-{test}")
    seconds = time.perf_counter() - start
    import json

    after = json.loads((run / "val.json").read_text())["history"][-1]
    return {"train": train, "test": test, "train_slices": len(data.train_indices),
            "test_slices": len(data.val_cases[test]), "train_seconds": round(seconds, 1),
            "training_free": {"mean_dice": round(before.mean_dice, 4),
                              "per_organ": {str(k): round(v, 4) for k, v in before.per_organ.items()}},
            "trained": {"mean_dice": round(after["mean_dice"], 4),
                        "per_organ": {k: round(v, 4) for k, v in after["per_organ"].items()}},
            "load_average": load_average()}


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__, device_default="cpu")
    parser.add_argument("--data", choices=["real-ct", "phantom"], default="real-ct")
    parser.add_argument("--size", type=int, default=64, help="slice side (px)")
    parser.add_argument("--cases", type=int, default=4, help="phantom cases (the last is held out)")
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--models", choices=["random", "pretrained"], default="random")
    parser.add_argument("--peft", default="none", choices=["none", "lora"])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.quick:
        args.iterations, args.size, args.cases = 2, 32, 2
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        bank, directions = _dataset(args.data, Path(tmp), args.size, args.cases, args.models)
        rows = [run_direction(bank, train, test, args, Path(tmp)) for train, test in directions]
    result = {"benchmark": "rag_learning", "machine": machine(), "quick": args.quick, "data": args.data,
              "slice_side": args.size, "k": args.k, "peft": args.peft, "iterations": args.iterations,
              "batch": args.batch, "lr": args.lr, "models": args.models,
              "sam2": "tiny (random init)" if args.models == "random" else "shipped tiny SAM 2 (pre-trained on phantoms)",
              "embedder": "tiny (random init)" if args.models == "random" else "shipped tiny embedder",
              "results": rows}
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

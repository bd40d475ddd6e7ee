"""Training-step benchmark: images/s and peak memory, reference mode vs the optimised path.

One step = forward of a LoRA (rank 4, q/v) SAM on a batch of slices, SAMed's
Dice 0.8 + CE 0.2 loss, backward, AdamW on the trainable tensors. Both modes
build the model with ``ragsam.models.build_model`` from the same seed and feed
the same in-memory batch (data loading is measured by ``volume_inference.py``,
not here), so the step compute is compared alone.

* ``reference``: fp32, eager attention, ``loss.item()`` after every step (the
  host sync of SAMed's logging), no compilation.
* ``optimised``: ragsam's fused ViT attention (``ragsam.models.vit_attention``:
  window projections on real tokens only, relative-position bias folded into
  one maskless SDPA call; ``--attention sdpa`` for the stock transformers SDPA
  block instead), bf16 autocast on CUDA, loss kept on the device, AdamW
  ``foreach``, optional ``torch.compile`` (``--compile``).
* ``optimised_bf16`` (CPU, with ``--cpu-bf16``): the optimised path plus bf16
  autocast on a CPU with native bf16 (``optim.bf16_cpu``), as a third mode.

Each (configuration, mode) runs in its own process so CPU max RSS is per mode.

Example:
    python bench/train_step.py --json bench/results/train_step.json
    python bench/train_step.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine, peak_memory_mb, reset_peak_memory, sync  # noqa: E402
from modes import (  # noqa: E402
    autocast,
    cpu_has_bf16,
    load_average,
    run_isolated,
    set_attention,
    speedup,
    trained_like_logits,
)

# (arch, image size, batch, timed steps); ViT-B at 512 batch 8 is the configuration.
DEFAULT_CONFIGS = [("tiny", 128, 8, 10), ("sam_vit_b", 512, 8, 2)]
QUICK_CONFIGS = [("tiny", 64, 2, 1)]
NUM_CLASSES = 13


def measure(arch: str, size: int, batch: int, steps: int, mode: str, device: str, compile_model: bool,
            attention: str = "fused") -> dict:
    """Time ``steps`` training steps (after 1 warm-up step) of one mode in this process."""
    from ragsam.models import ModelConfig, PeftConfig, build_model
    from ragsam.training.losses import DiceCELoss

    torch.manual_seed(0)
    reference = mode == "reference"
    cfg = ModelConfig(arch=arch, weights="random", num_classes=NUM_CLASSES, image_size=size,
                      peft=PeftConfig(method="lora", rank=4))
    model = trained_like_logits(build_model(cfg)).to(device).train()  # a loss that depends on the encoder
    impl = "eager" if reference else attention
    set_attention(model, impl)
    on_cuda = torch.device(device).type == "cuda"
    bf16 = not reference and (on_cuda or (mode == "optimised_bf16" and cpu_has_bf16()))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.1, foreach=not reference)
    loss_fn = DiceCELoss(0.8, 0.2)
    forward = torch.compile(model) if compile_model and not reference else model
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, NUM_CLASSES + 1, (batch, size, size), device=device)
    total = torch.zeros((), device=device)

    def step() -> None:
        nonlocal total
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            logits = forward(images)
        loss = loss_fn(logits.float(), labels)
        loss.backward()
        optimizer.step()
        if reference:
            total += loss.item()  # host sync every step, as SAMed's logging does
        else:
            total += loss.detach()  # read once at the end

    start = time.perf_counter()
    step()  # warm-up (and compilation)
    sync(device)
    warmup_s = time.perf_counter() - start
    reset_peak_memory(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if reference:
            sync(device)
        times.append(time.perf_counter() - start)
    sync(device)
    final_loss = float(total)
    seconds = statistics.median(times)
    return {"arch": arch, "image_size": size, "batch": batch, "mode": mode, "steps": steps,
            "attention": impl, "bf16": bf16, "compiled": forward is not model,
            "step_s_median": round(seconds, 4), "step_s_all": [round(t, 4) for t in times],
            "images_per_s": round(batch / seconds, 3), "warmup_s": round(warmup_s, 3),
            "peak_memory_mb": round(peak_memory_mb(device), 1), "loss_sum": round(final_loss, 4),
            "trainable_parameters": sum(p.numel() for p in trainable), "load_average": load_average()}


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--config", action="append", default=None, metavar="ARCH:SIZE:BATCH:STEPS",
                        help="configuration(s) to run, e.g. sam_vit_b:256:8:3 (default: tiny and ViT-B at 512)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in the optimised mode")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="also time the optimised path with bf16 autocast on a CPU with native bf16")
    parser.add_argument("--attention", default="fused", choices=("fused", "sdpa", "eager"),
                        help="ViT attention of the optimised modes (reference: always eager)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the two modes this many times; report each mode's best round")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.worker:  # one mode of one configuration, in this process
        w = json.loads(args.worker)
        print(json.dumps(measure(**w, device=args.device, compile_model=args.compile, attention=args.attention)))
        return {}
    if args.config:
        configs = [(a, int(s), int(b), int(n)) for a, s, b, n in (c.split(":") for c in args.config)]
    else:
        configs = QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS
    passthrough = ["--device", args.device, "--attention", args.attention] + (["--compile"] if args.compile else []) \
        + (["--threads", str(args.threads)] if args.threads else [])
    modes = ["reference", "optimised"]
    if args.cpu_bf16 and torch.device(args.device).type == "cpu":
        modes.append("optimised_bf16")
    results = []
    for arch, size, batch, steps in configs:
        row = {"arch": arch, "image_size": size, "batch": batch}
        rounds: dict[str, list[dict]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):  # modes alternate, so a burst of load hits both alike
            for mode in rounds:
                worker = json.dumps({"arch": arch, "size": size, "batch": batch, "steps": steps, "mode": mode})
                if args.quick:  # in this process (no interpreter start-up; peak memory is then cumulative)
                    res = measure(arch, size, batch, steps, mode, args.device, args.compile, attention=args.attention)
                else:
                    res = run_isolated("train_step.py", ["--worker", worker, *passthrough])
                rounds[mode].append(res)
        for mode, runs in rounds.items():  # the least disturbed round of each mode
            row[mode] = max(runs, key=lambda r: r["images_per_s"])
            row[mode]["images_per_s_rounds"] = [r["images_per_s"] for r in runs]
        row["speedup"] = speedup(row["reference"]["images_per_s"], row["optimised"]["images_per_s"])
        row["memory_ratio"] = round(row["optimised"]["peak_memory_mb"] / row["reference"]["peak_memory_mb"], 3)
        if "optimised_bf16" in row:
            row["speedup_bf16"] = speedup(row["reference"]["images_per_s"], row["optimised_bf16"]["images_per_s"])
            row["memory_ratio_bf16"] = round(row["optimised_bf16"]["peak_memory_mb"]
                                             / row["reference"]["peak_memory_mb"], 3)
        results.append(row)
    result = {"benchmark": "train_step", "machine": machine(), "device": args.device, "quick": args.quick,
              "isolated": not args.quick,
              "results": results}
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

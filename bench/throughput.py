"""Model throughput: slices/s of the multi-organ SAM forward pass alone (no file IO), reference vs optimised.

The issue's GPU target ("at least 500 slices/s of ViT-B inference at 512") is
about the network; ``volume_inference.py`` measures the whole file-to-file path.
Inputs are in memory and already on the device; labels are reduced on the
device (``max(dim=1).indices``) and not copied back, in both modes.

* ``reference``: the released SAMed way - batch 1, fp32, stock eager attention,
  LoRA unmerged.
* ``optimised``: ragsam's inference model - LoRA merged, fused ViT attention
  (``ragsam.models.vit_attention``), ``--batch`` slices per pass, bf16 autocast on
  CUDA (``--cpu-bf16``: also on a CPU with native bf16), optional ``--compile``.

Both modes run in this process on the same weights; ``agreement`` is the share
of identical labels (fp32 modes agree up to near-ties of the logits). Peak
memory is the CUDA allocator's per mode; on CPU it is the process's max RSS,
cumulative over both modes (run ``train_step.py`` / ``volume_inference.py`` for
per-mode CPU memory).

Example:
    python bench/throughput.py --arch sam_vit_b --size 512 --slices 64 --batch 32
    python bench/throughput.py --quick
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    apply_torch_threads,
    bench_parser,
    emit,
    machine,
    peak_memory_mb,
    reset_peak_memory,
    time_call,
)
from modes import autocast, cpu_has_bf16, load_average, set_attention, speedup, trained_like_logits  # noqa: E402

NUM_CLASSES = 13


def build(arch: str, size: int, device: str) -> torch.nn.Module:
    """A LoRA rank-4 multi-organ SAM with non-zero LoRA updates (so that merging matters) and O(1) logits."""
    from ragsam.models import ModelConfig, PeftConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, num_classes=NUM_CLASSES, image_size=size,
                                    peft=PeftConfig(method="lora", rank=4)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_b" in name:
                param.normal_(0.0, 0.02)
    return trained_like_logits(model).to(device).eval()


@torch.no_grad()
def run_mode(model: torch.nn.Module, images: torch.Tensor, batch: int, bf16: bool, device: str,
             repeats: int) -> tuple[dict, torch.Tensor]:
    """Label all ``images`` ``repeats`` times (after one warm-up pass); best pass's rate."""
    labels: list[torch.Tensor] = []  # of the latest pass

    def one_pass() -> None:
        labels.clear()
        for start in range(0, images.shape[0], batch):
            with autocast(device, bf16):
                logits = model(images[start:start + batch])
            labels.append(logits.float().max(dim=1).indices.to(torch.uint8))

    warmup_s = time_call(one_pass, repeats=1, warmup=0, device=device)[0]
    reset_peak_memory(device)
    times = time_call(one_pass, repeats, warmup=0, device=device)
    best = min(times)
    return {"batch": batch, "bf16": bf16, "seconds_per_pass": [round(t, 4) for t in times],
            "warmup_s": round(warmup_s, 3), "slices_per_s": round(images.shape[0] / best, 3),
            "peak_memory_mb": round(peak_memory_mb(device), 1), "load_average": load_average()}, torch.cat(labels)


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--arch", default="sam_vit_b")
    parser.add_argument("--size", type=int, default=512, help="input side S (px)")
    parser.add_argument("--slices", type=int, default=16, help="slices per pass")
    parser.add_argument("--batch", type=int, default=8, help="slices per forward pass (optimised)")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per mode (best is reported)")
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on a CPU with native bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the optimised model")
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.quick:
        args.arch, args.size, args.slices, args.batch, args.repeats = "tiny", 64, 4, 2, 1
    from ragsam.peft import merge_peft

    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    images = torch.rand(args.slices, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(device)
    reference = build(args.arch, args.size, device)
    optimised = merge_peft(copy.deepcopy(reference))
    set_attention(reference, "eager")
    set_attention(optimised, "fused")
    forward = torch.compile(optimised) if args.compile else optimised
    bf16 = on_cuda or (args.cpu_bf16 and cpu_has_bf16())
    ref_row, ref_labels = run_mode(reference, images, 1, False, device, args.repeats)
    del reference
    opt_row, opt_labels = run_mode(forward, images, args.batch, bf16, device, args.repeats)
    opt_row["compiled"] = args.compile
    result = {"benchmark": "throughput", "machine": machine(), "device": device, "quick": args.quick,
              "arch": args.arch, "image_size": args.size, "slices": args.slices,
              "reference": {"attention": "eager", "lora": "unmerged", **ref_row},
              "optimised": {"attention": "fused", "lora": "merged", **opt_row},
              "speedup": speedup(ref_row["slices_per_s"], opt_row["slices_per_s"]),
              "agreement": round(float((ref_labels == opt_labels).float().mean()), 6)}
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

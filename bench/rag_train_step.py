"""Episodic SAM 2 fine-tuning (``ragsam train-rag``): seconds per training iteration at k = 1, 2, 4.

One iteration = the forward of ``batch`` episodes (query + ``k`` supports through the image
encoder, memory encoder, memory attention and decoder, one object per organ on the
supports), the per-episode Dice + CE loss, backward and the AdamW step, exactly as
:func:`ragsam.training.rag_run.episode_step` runs it. Reference in the same run: the
training-free forward of the same episodes (inference mode, supports encoded each time,
no loss) - what one episode costs without learning. Episodes are synthetic abdominal
slices (:func:`rag_segment.phantom_slices`, five organs) at ``--side`` px.

``--peft lora`` is the ``rag_lora`` preset (LoRA r=4 on q/v of the image encoder and memory
attention, full decoder); ``--peft none`` trains everything. bf16 autocast on CUDA as in training.

Example:
    python bench/rag_train_step.py --threads 1 --json bench/results/rag_train_step.json
    python bench/rag_train_step.py --device cuda --sam2 random --side 512 --batch 4
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine, peak_memory_mb, time_call  # noqa: E402
from modes import load_average  # noqa: E402
from rag_segment import phantom_slices  # noqa: E402


def episodes(k: int, batch: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, 1 + k, side, side)`` images and labels: query z and supports from a second 'patient'."""
    q_img, q_lab = phantom_slices(batch, side, seed=1)
    s_img, s_lab = phantom_slices(batch + k, side, seed=2)
    images = torch.stack([torch.cat([q_img[i:i + 1], s_img[i:i + k]]) for i in range(batch)])
    labels = torch.stack([torch.cat([q_lab[i:i + 1], s_lab[i:i + k]]) for i in range(batch)])
    return images, labels


def bench_k(model, k: int, args, device: torch.device) -> dict:
    from types import SimpleNamespace

    from ragsam.training.distributed import DistInfo
    from ragsam.training.losses import DiceCELoss
    from ragsam.training.rag_run import episode_step
    from ragsam.training.sampler import Batch

    images, labels = episodes(k, args.batch, args.side)
    batch = Batch(0, list(range(args.batch)), images, labels)
    info = DistInfo(0, 1, 0, device)
    optim = SimpleNamespace(bf16=True, bf16_cpu=False, object_score_weight=1.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    loss_fn = DiceCELoss()

    def train_iteration() -> None:
        opt.zero_grad(set_to_none=True)
        episode_step(model, batch, info, loss_fn, optim).total.backward()
        opt.step()

    def free_forward() -> None:
        with torch.inference_mode():
            model(images.to(device), labels.to(device))

    train_s = time_call(train_iteration, args.repeats, device=str(device))
    ref_s = time_call(free_forward, args.repeats, device=str(device))
    return {"k": k, "batch": args.batch,
            "train_iteration_s": round(float(np.median(train_s)), 4),
            "reference_forward_s": round(float(np.median(ref_s)), 4),
            "train_over_forward": round(float(np.median(train_s) / np.median(ref_s)), 2),
            "load_average": load_average()}


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--sam2", default="tiny", help="SAM 2 weights (tiny | random | HF id | .pt)")
    parser.add_argument("--peft", default="lora", choices=["lora", "none"], help="rag_lora preset or full training")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4], help="supports per query")
    parser.add_argument("--batch", type=int, default=2, help="episodes per iteration")
    parser.add_argument("--side", type=int, default=64, help="slice side (px)")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per k (median reported)")
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.quick:
        args.ks, args.batch, args.side, args.repeats = [1, 2], 1, 32, 1
    from ragsam.models.sam2 import build_sam2
    from ragsam.peft.config import Sam2PeftConfig
    from ragsam.peft.sam2 import apply_sam2_peft
    from ragsam.training.rag_model import RagEpisodeModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    sam2, info = build_sam2(args.sam2, device=device)
    apply_sam2_peft(sam2, Sam2PeftConfig(method=args.peft))
    model = RagEpisodeModel(sam2, num_classes=7).train()
    rows = [bench_k(model, k, args, device) for k in args.ks]
    trainable = sum(p.numel() for p in sam2.parameters() if p.requires_grad)
    result = {"benchmark": "rag_train_step", "machine": machine(), "device": args.device, "quick": args.quick,
              "sam2": info, "peft": args.peft, "trainable_parameters": trainable, "slice_side": args.side,
              "results": rows, "peak_memory_mb": round(peak_memory_mb(args.device), 1)}
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

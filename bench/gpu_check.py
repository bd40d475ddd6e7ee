"""Correctness checks of the optimised paths on the device they will run on (first step of ``gpu.sh``).

The CPU test suite checks the fused ViT block against the stock one on the CPU; on
CUDA, PyTorch picks other kernels (flash / memory-efficient SDPA, bf16 autocast). This
script checks, on ``--device``:

* ``fused_vs_eager``: encoder outputs and LoRA gradients of the fused block equal the
  stock eager block's (fp32; relative error, threshold 1e-4: TF32 is off);
* ``bf16``: the fused block under bf16 autocast stays within 3e-2 (relative) of fp32 eager;
* ``fused_kernels``: a fused training step runs with SDPA restricted to the fused kernels
  (flash / memory-efficient on CUDA, flash on CPU for the folded path), i.e. it never
  needs the unfused math kernel;
* ``host_syncs``: a training step (forward, Dice + CE, backward, foreach AdamW) under
  ``torch.cuda.set_sync_debug_mode("warn")`` and how many synchronising calls it made
  (CUDA only).

Prints one JSON object; exit code 1 if a check fails.

Example:
    python bench/gpu_check.py --device cuda --json $OUT/gpu_check.json
    python bench/gpu_check.py --quick
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine  # noqa: E402
from modes import set_attention, trained_like_logits  # noqa: E402


def _model(arch: str, size: int, device: str) -> torch.nn.Module:
    from ragsam.models import ModelConfig, PeftConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, num_classes=13, image_size=size, peft=PeftConfig(method="lora", rank=4)))
    with torch.no_grad():
        for name, param in model.vision_encoder.named_parameters():
            if "rel_pos" in name or "lora_b" in name:  # zero at initialisation: make them count
                param.normal_(0.0, 0.05)
    return trained_like_logits(model).to(device)


def _encode(model: torch.nn.Module, impl: str, images: torch.Tensor, probe: torch.Tensor,
            bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    set_attention(model, impl)
    model.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model.encode(images)
    (out.float() * probe).sum().backward()
    grad = model.vision_encoder.layers[0].attn.qkv.lora_a["q"].grad.detach().clone()
    return out.detach().float(), grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bf16: bool) -> None:
    from ragsam.training.losses import DiceCELoss

    set_attention(model, "fused")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(images)
    DiceCELoss(0.8, 0.2)(logits.float(), labels).backward()
    optimizer.step()


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--arch", default="sam_vit_b")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.quick:
        args.arch, args.size, args.batch = "tiny", 96, 2
    device, on_cuda = args.device, torch.device(args.device).type == "cuda"
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = _model(args.arch, args.size, device)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    grid = args.size // 16
    probe = torch.randn(args.batch, model.sam_config.vision_config.output_channels, grid, grid, generator=gen).to(device)
    labels = torch.randint(0, 14, (args.batch, args.size, args.size), generator=gen).to(device)
    checks: dict[str, dict] = {}

    ref_out, ref_grad = _encode(model, "eager", images, probe)
    out, grad = _encode(model, "fused", images, probe)
    errors = {"output": _rel(out, ref_out), "lora_grad": _rel(grad, ref_grad)}
    checks["fused_vs_eager"] = {**errors, "ok": max(errors.values()) < 1e-4}
    low, _ = _encode(model, "fused", images, probe, bf16=True)
    checks["bf16"] = {"output": _rel(low, ref_out), "ok": _rel(low, ref_out) < 3e-2}

    kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION] if on_cuda else [SDPBackend.FLASH_ATTENTION]
    try:
        with sdpa_kernel(kernels), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if on_cuda:
                _train_step(model, images, labels, bf16=True)
            else:  # CPU training takes the explicit path by design; the folded one is inference here
                with torch.no_grad():
                    set_attention(model, "fused")
                    model(images)
        checks["fused_kernels"] = {"kernels": [k.name for k in kernels], "ok": True}
    except RuntimeError as exc:
        checks["fused_kernels"] = {"kernels": [k.name for k in kernels], "ok": False, "error": str(exc)[:300]}

    if on_cuda:
        _train_step(model, images, labels, bf16=True)  # warm-up (allocator, cuBLAS handles)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _train_step(model, images, labels, bf16=True)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = sorted({str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message)})
        checks["host_syncs"] = {"count": len(syncs), "where": syncs, "ok": True}

    ok = all(c["ok"] for c in checks.values())
    result = {"benchmark": "gpu_check", "machine": machine(), "device": device, "quick": args.quick,
              "arch": args.arch, "image_size": args.size, "batch": args.batch, "checks": checks, "ok": ok}
    emit(result, args.json)
    if not ok and argv is None:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()

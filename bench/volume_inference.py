"""Volume-inference benchmark: slices/s and seconds for a CT volume, file reading and writing included.

A synthetic abdominal phantom (``ragsam.data.phantom``) of ``--slices`` x S x S
voxels is written as NIfTI, and a ragsam run folder (``config.yaml`` +
``model.safetensors``, a LoRA rank-4 SAM with non-zero LoRA updates) is created
the way ``ragsam train`` lays it out. Both modes then go from the NIfTI file on
disk to a label NIfTI on disk:

* ``optimised``: ``ragsam.inference.predict`` itself - LoRA merged, scaled-dot-product
  attention, ``--batch`` slices per forward pass, bf16 autocast on CUDA.
* ``reference``: the released SAMed loop - the run's model with LoRA unmerged,
  eager attention, fp32, one slice per forward pass, per-slice softmax.

* ``proposed``: the change recommended for ``predict`` (see :func:`run_proposed`):
  as ``optimised`` but labels taken per batch from the logits with
  ``max(dim=1).indices`` instead of storing every slice's softmax and ``argmax``.

The label volumes are compared voxel by voxel with the reference (``agreement``):
every path must give the same segmentation. Each mode runs in its own process.

Example:
    python bench/volume_inference.py --json bench/results/volume_inference.json
    python bench/volume_inference.py --arch sam_vit_b --slices 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine, peak_memory_mb, sync  # noqa: E402
from modes import cpu_has_bf16, load_average, run_isolated, set_attention, speedup  # noqa: E402

NUM_CLASSES = 13
WINDOW = (-125.0, 275.0)
MODES = ("reference", "optimised", "proposed")


def make_inputs(workdir: Path, arch: str, image_size: int, slices: int, side: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the phantom volume and a run folder under ``workdir``; returns ``(run_dir, image_path)``."""
    import SimpleITK as sitk

    from ragsam.config import dump_config
    from ragsam.data.phantom import make_phantom
    from ragsam.data.volume import to_sitk
    from ragsam.models import ModelConfig, PeftConfig, build_model, save_trainable
    from ragsam.training.config import TrainConfig
    from ragsam.utils.atomic import write_text
    from ragsam.utils.seeding import seed_everything

    image, _ = make_phantom(shape=(slices, side, side), spacing_mm=(2.5, 0.8, 0.8), seed=seed)
    image_path = workdir / "ct.nii.gz"
    sitk.WriteImage(to_sitk(image), str(image_path), useCompression=True)
    cfg = TrainConfig()
    cfg.model = ModelConfig(arch=arch, weights="random", num_classes=NUM_CLASSES, image_size=image_size,
                            peft=PeftConfig(method="lora", rank=4))
    cfg.data.window = list(WINDOW)
    run_dir = workdir / "run"
    run_dir.mkdir()
    write_text(run_dir / "config.yaml", dump_config(cfg))
    seed_everything(cfg.seed)  # load_run rebuilds the random base from this seed
    model = build_model(cfg.model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking LoRA updates (B is zero at init), so that merging matters
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    save_trainable(model, run_dir / "model.safetensors")
    return run_dir, image_path


def run_reference(run_dir: Path, image_path: Path, out: Path, device: str) -> int:
    """SAMed-style inference: one slice at a time, fp32, eager attention, LoRA unmerged."""
    from ragsam.data.slices import SliceSettings, slices_to_volume, volume_to_slices
    from ragsam.data.volume import read_image, write_labels
    from ragsam.inference.run_loader import load_run

    model, cfg = load_run(run_dir, device, merge=False)
    set_attention(model, "eager")
    image = read_image(image_path)
    stack = volume_to_slices(image, None, SliceSettings(window=tuple(cfg.data.window), size=cfg.model.image_size))
    labels = np.zeros(stack.images.shape, dtype=np.uint8)
    with torch.no_grad():
        for z in range(stack.images.shape[0]):
            x = torch.from_numpy(stack.model_input(z, channels=3)[None]).float().to(device)
            probs = torch.softmax(model(x), dim=1)
            labels[z] = probs.argmax(1)[0].to(torch.uint8).cpu().numpy()
    volume = slices_to_volume(labels, stack.grid)
    write_labels(volume, image.geometry, out, force=True)
    return int(stack.images.shape[0])


def run_proposed(run_dir: Path, image_path: Path, out: Path, device: str, batch: int, compile_model: bool,
                 cpu_bf16: bool = False) -> int:
    """The change recommended for ``ragsam.inference.predict`` (same labels, measured here).

    ``predict`` keeps the softmax probabilities of every slice, float32 ``(Z, K+1, S, S)``
    (1.5 GB for 100 slices at 512 px, 14 classes), then takes ``argmax`` over the class
    axis, which PyTorch runs slowly on CPU for a non-innermost axis. When the slices
    are already at the volume's in-plane size the labels only need the argmax of the
    logits (softmax is monotonic), taken per batch with ``max(dim=1).indices``.
    """
    from ragsam.data.slices import SliceSettings, slices_to_volume, volume_to_slices
    from ragsam.data.volume import read_image, write_labels
    from ragsam.inference.run_loader import load_run

    model, cfg = load_run(run_dir, device, merge=True)
    forward = torch.compile(model) if compile_model else model
    image = read_image(image_path)
    stack = volume_to_slices(image, None, SliceSettings(window=tuple(cfg.data.window), size=cfg.model.image_size))
    depth, height, width = stack.grid.canonical_shape
    on_cuda = torch.device(device).type == "cuda"
    amp_device = "cuda" if on_cuda else "cpu"
    bf16 = on_cuda or (cpu_bf16 and cpu_has_bf16())
    with torch.no_grad():
        if (height, width) == stack.images.shape[-2:]:
            labels = np.zeros(stack.images.shape, dtype=np.uint8)
            for first in range(0, depth, batch):
                zs = range(first, min(first + batch, depth))
                x = torch.from_numpy(np.stack([stack.model_input(z, channels=3) for z in zs])).to(device)
                with torch.autocast(amp_device, dtype=torch.bfloat16, enabled=bf16):
                    logits = forward(x)
                labels[first:first + batch] = logits.float().max(dim=1).indices.to(torch.uint8).cpu().numpy()
            volume = slices_to_volume(labels, stack.grid)
        else:  # resized slices: per-batch probabilities, resized back by slices_to_volume
            from ragsam.inference.predict import predict_probabilities

            probs = predict_probabilities(model, stack.model_input(channels=3), batch, torch.device(device))
            volume = slices_to_volume(probs, stack.grid)
    write_labels(volume, image.geometry, out, force=True)
    return depth


def measure(mode: str, run_dir: str, image: str, out: str, device: str, batch: int,
            compile_model: bool = False, cpu_bf16: bool = False) -> dict:
    """Seconds from the NIfTI on disk to the label NIfTI on disk, for one mode, in this process."""
    from ragsam.inference.predict import predict

    torch.manual_seed(0)
    start = time.perf_counter()
    if mode == "reference":
        slices = run_reference(Path(run_dir), Path(image), Path(out), device)
    elif mode == "proposed":
        slices = run_proposed(Path(run_dir), Path(image), Path(out), device, batch, compile_model, cpu_bf16)
    else:
        slices = predict(run_dir, image, out, force=True, batch_size=batch, device=device)[0].slices
    sync(device)
    seconds = time.perf_counter() - start
    return {"mode": mode, "batch": 1 if mode == "reference" else batch, "slices": slices,
            "seconds": round(seconds, 3), "slices_per_s": round(slices / seconds, 3),
            "peak_memory_mb": round(peak_memory_mb(device), 1), "load_average": load_average()}


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--arch", default="tiny", help="SAM architecture (tiny, sam_vit_b, ...)")
    parser.add_argument("--size", type=int, default=512, help="model input side S (px)")
    parser.add_argument("--slices", type=int, default=100, help="slices of the volume")
    parser.add_argument("--side", type=int, default=512, help="in-plane voxels of the volume")
    parser.add_argument("--batch", type=int, default=8, help="slices per forward pass (optimised mode)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in the proposed mode")
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU in the proposed mode")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker), device=args.device, batch=args.batch,
                                 compile_model=args.compile, cpu_bf16=args.cpu_bf16)))
        return {}
    if args.quick:
        args.size, args.slices, args.side, args.batch = 64, 4, 64, 4
    passthrough = ["--device", args.device, "--batch", str(args.batch)] + (["--compile"] if args.compile else []) + (
        ["--cpu-bf16"] if args.cpu_bf16 else []) + (
        ["--threads", str(args.threads)] if args.threads else [])
    with tempfile.TemporaryDirectory(prefix="ragsam-bench-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        run_dir, image = make_inputs(work, args.arch, args.size, args.slices, args.side)
        setup_s = time.perf_counter() - start
        modes = {}
        for mode in MODES:
            out = work / f"{mode}.nii.gz"
            worker = json.dumps({"mode": mode, "run_dir": str(run_dir), "image": str(image), "out": str(out)})
            if args.quick:  # in this process (no interpreter start-up; peak memory is then cumulative)
                modes[mode] = measure(**json.loads(worker), device=args.device, batch=args.batch,
                                      cpu_bf16=args.cpu_bf16)
            else:
                modes[mode] = run_isolated("volume_inference.py", ["--worker", worker, *passthrough])
        from ragsam.data.volume import read_labels

        ref = read_labels(work / "reference.nii.gz").array
        agreement = {m: round(float((read_labels(work / f"{m}.nii.gz").array == ref).mean()), 6) for m in MODES[1:]}
    result = {"benchmark": "volume_inference", "machine": machine(), "device": args.device, "quick": args.quick,
              "batch": args.batch, "cpu_bf16": args.cpu_bf16, "compiled": args.compile,
              "arch": args.arch, "image_size": args.size, "volume_zyx": [args.slices, args.side, args.side],
              "setup_s": round(setup_s, 2), "isolated": not args.quick, **modes,
              "speedup": {m: speedup(modes["reference"]["slices_per_s"], modes[m]["slices_per_s"]) for m in MODES[1:]},
              "agreement": agreement}
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

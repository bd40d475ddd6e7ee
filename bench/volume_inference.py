"""Volume-inference benchmark: slices/s and seconds for a CT volume, file reading and writing included.

A synthetic abdominal phantom (``ragsam.data.phantom``) of ``--slices`` x S x S
voxels is written as NIfTI, and a ragsam run folder (``config.yaml`` +
``model.safetensors``, a LoRA rank-4 SAM with non-zero LoRA updates) is created
the way ``ragsam train`` lays it out. Both modes then go from the NIfTI file on
disk to a label NIfTI on disk:

* ``optimised``: ``ragsam.inference.predict`` itself - LoRA merged, ragsam's attention,
  ``--batch`` slices per forward pass, labels per batch from the logits, input assembly
  and label reduction in threads beside the model, bf16 autocast on CUDA (and on CPU
  with ``--cpu-bf16``).
* ``reference``: the released SAMed loop - the run's model with LoRA unmerged,
  eager attention, fp32, one slice per forward pass, per-slice softmax and argmax.

The label volumes are compared voxel by voxel with the reference (``agreement``):
every path must give the same segmentation. Each mode runs in its own process;
with ``--rounds N`` the modes alternate N times and each mode's fastest round is
reported (all rounds are kept in ``seconds_all``).

``--serial`` adds ``predict(..., overlap=False)`` (the same stages one after another in
one thread), the evidence for what the helper threads gain or cost on this machine.
``--profile`` adds a process that runs ``predict`` with its stage timings
(busy seconds of reading, slicing, input assembly, forward, labels, back to the
volume grid, writing; stages overlap, so they add up to more than the wall time)
and measures writing the label map at several gzip levels.

Example:
    python bench/volume_inference.py --threads 1 --batch 1 --profile --json bench/results/volume_inference.json
    python bench/volume_inference.py --arch sam_vit_b --slices 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine, peak_memory_mb, sync  # noqa: E402
from modes import load_average, run_isolated, set_attention, speedup, trained_like_logits  # noqa: E402

NUM_CLASSES = 13
WINDOW = (-125.0, 275.0)
MODES = ("reference", "optimised")  # plus "serial" with --serial
GZIP_LEVELS = (1, 6, 9)


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
        # SAMed's argmax of a near-uniform softmax takes the first of rounded-equal classes:
        # give the random decoder a trained model's O(1) logits (saved with the run).
        trained_like_logits(model)
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


def write_compression(labels_path: Path, workdir: Path, seed: int = 0) -> dict:
    """Seconds and bytes of writing label maps uncompressed and at several gzip levels.

    Two maps: the benchmark's prediction (a random model: speckled, compresses ~7x) and
    the phantom's ground truth on the same grid (organ-shaped, compresses ~200x like a
    real segmentation). SimpleITK passes ``compressionLevel`` to ITK only as a hint;
    equal byte counts across levels mean the NIfTI writer ignores it. ``zlib_level_1``
    is the alternative of compressing ITK's uncompressed ``.nii`` with Python's gzip.
    """
    import gzip

    import SimpleITK as sitk

    from ragsam.data.phantom import make_phantom

    predicted = sitk.ReadImage(str(labels_path))
    depth, side = predicted.GetSize()[2], predicted.GetSize()[0]
    _, truth = make_phantom(shape=(depth, side, side), spacing_mm=(2.5, 0.8, 0.8), seed=seed)
    rows: dict[str, dict] = {}
    for label_map, image in [("predicted", predicted), ("ground_truth", sitk.GetImageFromArray(truth.array))]:
        row = {}
        for name, compress, level in [("none", False, -1), ("default", True, -1),
                                      *[(f"level_{lv}", True, lv) for lv in GZIP_LEVELS]]:
            path = workdir / f"write_{name}.nii{'.gz' if compress else ''}"
            start = time.perf_counter()
            sitk.WriteImage(image, str(path), compress, level)
            row[name] = {"seconds": round(time.perf_counter() - start, 4), "bytes": path.stat().st_size}
        raw = (workdir / "write_none.nii").read_bytes()
        start = time.perf_counter()
        packed = gzip.compress(raw, compresslevel=1, mtime=0)
        row["zlib_level_1"] = {"seconds": round(row["none"]["seconds"] + time.perf_counter() - start, 4),
                               "bytes": len(packed)}
        rows[label_map] = row
    return rows


def measure(mode: str, run_dir: str, image: str, out: str, device: str, batch: int, cpu_bf16: bool = False) -> dict:
    """Seconds from the NIfTI on disk to the label NIfTI on disk, for one mode, in this process."""
    from ragsam.inference.predict import PredictOptions, predict

    torch.manual_seed(0)
    timings: dict[str, float] | None = {} if mode == "profile" else None
    load = load_average()
    start = time.perf_counter()
    if mode == "reference":
        slices = run_reference(Path(run_dir), Path(image), Path(out), device)
    else:  # "serial": the same predict with its stages one after another in one thread
        options = PredictOptions(batch_size=batch, device=device, cpu_bf16=cpu_bf16, overlap=mode != "serial")
        slices = predict(run_dir, image, out, options, force=True, timings=timings)[0].slices
    sync(device)
    seconds = time.perf_counter() - start
    result = {"mode": mode, "batch": 1 if mode == "reference" else batch, "slices": slices,
              "seconds": round(seconds, 3), "slices_per_s": round(slices / seconds, 3),
              "peak_memory_mb": round(peak_memory_mb(device), 1), "load_average": load_average(),
              "load_average_before": load}
    if timings is not None:
        wall = timings.pop("wall")
        result["stages_s"] = {k: round(v, 3) for k, v in timings.items()}
        result["stages_sum_s"] = round(sum(timings.values()), 3)
        result["wall_s"] = round(wall, 3)
        result["write_compression"] = write_compression(Path(out), Path(out).parent)
    return result


def _worker_args(mode: str, run_dir: Path, image: Path, work: Path) -> str:
    out = work / f"{mode}.nii.gz"
    return json.dumps({"mode": mode, "run_dir": str(run_dir), "image": str(image), "out": str(out)})


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__)
    parser.add_argument("--arch", default="tiny", help="SAM architecture (tiny, sam_vit_b, ...)")
    parser.add_argument("--size", type=int, default=512, help="model input side S (px)")
    parser.add_argument("--slices", type=int, default=100, help="slices of the volume")
    parser.add_argument("--side", type=int, default=512, help="in-plane voxels of the volume")
    parser.add_argument("--batch", type=int, default=8, help="slices per forward pass (optimised mode)")
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on CPU in the optimised mode")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the modes this many times; best round counts")
    parser.add_argument("--profile", action="store_true", help="also time predict's stages and the gzip levels")
    parser.add_argument("--serial", action="store_true", help="also run predict with overlap=False (no helper threads)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker), device=args.device, batch=args.batch,
                                 cpu_bf16=args.cpu_bf16)))
        return {}
    if args.quick:
        args.size, args.slices, args.side, args.batch, args.rounds = 64, 4, 64, 4, 1
    passthrough = ["--device", args.device, "--batch", str(args.batch)] + (
        ["--cpu-bf16"] if args.cpu_bf16 else []) + (["--threads", str(args.threads)] if args.threads else [])
    with tempfile.TemporaryDirectory(prefix="ragsam-bench-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        run_dir, image = make_inputs(work, args.arch, args.size, args.slices, args.side)
        setup_s = time.perf_counter() - start
        modes_run = MODES + (("serial",) if args.serial else ())
        rounds: dict[str, list[dict]] = {m: [] for m in modes_run}
        for _ in range(max(1, args.rounds)):
            for mode in modes_run:
                worker = _worker_args(mode, run_dir, image, work)
                if args.quick:  # in this process (no interpreter start-up; peak memory is then cumulative)
                    row = measure(**json.loads(worker), device=args.device, batch=args.batch, cpu_bf16=args.cpu_bf16)
                else:
                    row = run_isolated("volume_inference.py", ["--worker", worker, *passthrough])
                rounds[mode].append(row)
        modes = {m: dict(min(rows, key=lambda r: r["seconds"]), seconds_all=[r["seconds"] for r in rows])
                 for m, rows in rounds.items()}
        profile = None
        if args.profile:
            worker = _worker_args("profile", run_dir, image, work)
            profile = (measure(**json.loads(worker), device=args.device, batch=args.batch, cpu_bf16=args.cpu_bf16)
                       if args.quick else run_isolated("volume_inference.py", ["--worker", worker, *passthrough]))
        from ragsam.data.volume import read_labels

        ref = read_labels(work / "reference.nii.gz").array
        agreement = {m: round(float((read_labels(work / f"{m}.nii.gz").array == ref).mean()), 6) for m in modes_run[1:]}
    result = {"benchmark": "volume_inference", "machine": machine(), "device": args.device, "quick": args.quick,
              "batch": args.batch, "cpu_bf16": args.cpu_bf16, "arch": args.arch, "image_size": args.size,
              "volume_zyx": [args.slices, args.side, args.side], "rounds": max(1, args.rounds),
              "setup_s": round(setup_s, 2), "isolated": not args.quick, "cpu_count": os.cpu_count(), **modes,
              "speedup": {m: speedup(modes["reference"]["slices_per_s"], modes[m]["slices_per_s"]) for m in modes_run[1:]},
              "agreement": agreement}
    if profile is not None:
        result["profile"] = profile
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

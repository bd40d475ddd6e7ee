"""PACS round trip benchmark: ``segment`` alone vs ``pacs segment`` (fetch + segment + SEG + store).

The shared DICOM series (20 slices of 512 x 512, JPEG 2000, 3.2 MB; its UIDs restored as in
``tests/pacs/dicom_fixtures.py``) is pushed into a real Orthanc started for the run (Debian's
``orthanc`` + ``orthanc-dicomweb``, on 127.0.0.1, ``tests/pacs/orthanc_server.py``).

* ``reference`` (segment alone): :func:`ragsam.retrieval.segment.segment_cases` on the series
  folder on local disk, to a fresh NIfTI: what ``ragsam segment`` does.
* ``pacs``: :func:`ragsam.pacs.segment.pacs_segment` with an empty cache and no SEG in the
  study: QIDO-RS, WADO-RS of every instance, the same ``segment_cases`` writing the DICOM SEG
  too (highdicom), and STOW-RS; seconds per stage.
* ``pacs_rerun``: the same call again (everything cached, the SEG already stored).

Modes alternate ``--rounds`` times (the first round also pays imports and model loading in
both modes; ``rounds[0]`` is reported apart, the figures are medians of the later rounds).
``overhead`` = (pacs - reference) / reference; ``transfer_overhead`` counts only the PACS
stages (find, fetch, store); ``transfer_over_segment_stage`` the same stages over the segment
stage of the same call (free of the noise between calls on a shared machine). The pacs
segment stage also writes the SEG (``--output-format both``, as ``ragsam segment`` would). Both modes' labels are
compared (``agreement``: they must be identical).

Models: ``--models tiny`` (the tiny SAM 2 and slice embedder shipped with ragsam, 64-pixel
slices: the demo's scale), ``--models hiera-tiny`` (SAM 2.1 Hiera-tiny at 1024 px and the
DINOv2-small architecture at 224 px, random weights: the compute of the public models at
512-pixel slices).

Example:
    python bench/pacs.py --threads 1 --json bench/results/cpu/pacs_tiny.json
    python bench/pacs.py --models hiera-tiny --rounds 2 --json bench/results/cpu/pacs_hiera_tiny.json
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "pacs"))
sys.path.insert(0, str(ROOT / "tests" / "retrieval"))
from common import apply_torch_threads, bench_parser, emit, machine  # noqa: E402
from modes import load_average  # noqa: E402

SHARED = ROOT / "tests" / "assets" / "real-ct"
STAGES = ("find", "fetch", "segment", "read", "store")


def _bank(root: Path, models: str, quick: bool) -> tuple[Path, str]:
    """A bank over the shared 3 mm case (the query series is not in it) and the SAM 2 weights to use."""
    from bank_fixtures import write_prepared

    from ragsam.data.slices import SliceSettings, volume_to_slices
    from ragsam.data.volume import read_image, read_labels
    from ragsam.hub.tiny_models import tiny_models
    from ragsam.retrieval.bank import BankOptions, build_bank

    if models == "tiny":
        tiny = tiny_models()
        size, embedder, image_size, sam2 = tiny.slice_size, str(tiny.embedder), tiny.embedder_image_size, str(tiny.sam2)
    else:
        size, embedder, image_size, sam2 = 512, "random", 224, "random"
    if quick:
        size, embedder, image_size, sam2 = 32, "tiny", 28, "tiny"
    image = read_image(SHARED / "abdomen-ct-3mm" / "ct.nii.gz")
    labels = read_labels(SHARED / "abdomen-ct-3mm" / "labels.nii.gz", reference=image)
    stack = volume_to_slices(image, labels, SliceSettings(size=size))
    prepared = write_prepared(root / "prepared", {"ct3mm": (stack.images, stack.labels)})
    torch.manual_seed(0)
    build_bank(prepared, root / "bank", BankOptions(embedder_weights=embedder, image_size=image_size, device="cpu"))
    return root / "bank", sam2


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__, device_default="cpu")
    parser.add_argument("--models", choices=("tiny", "hiera-tiny"), default="tiny")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the modes (>= 2)")
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args(argv)
    apply_torch_threads(args.threads)
    from dicom_fixtures import STUDY, write_series
    from orthanc_server import PASSWORD, USER, Orthanc

    from ragsam.data.volume import read_labels
    from ragsam.inference.rag_segment import SegmenterOptions, segment_cases
    from ragsam.pacs.cache import InstanceCache
    from ragsam.pacs.client import Pacs
    from ragsam.pacs.credentials import Credentials
    from ragsam.pacs.segment import PacsModel, pacs_segment
    from ragsam.retrieval.segment import SegmentOptions

    rounds = 2 if args.quick else max(2, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="ragsam-bench-pacs-"))
    orthanc = None
    try:
        bank, sam2 = _bank(work / "bank", args.models, args.quick)
        series = write_series({"image": SHARED / "abdomen-ct-dicom" / "dicom"}, work / "series")
        orthanc = Orthanc(work / "orthanc").start()
        orthanc.upload(series)
        pacs = Pacs(orthanc.dicomweb, Credentials(user=USER, password=PASSWORD, source="bench"))
        model = PacsModel(index=bank, sam2=sam2, k=args.k, device=args.device)
        records = []
        for r in range(rounds):
            out = work / f"reference-{r}.nii.gz"
            start = time.perf_counter()
            segment_cases(series, out, bank, SegmenterOptions(sam2, device=args.device), SegmentOptions(k=args.k))
            reference_s = time.perf_counter() - start
            orthanc.delete_modality(STUDY, "SEG")
            cache = InstanceCache(work / f"cache-{r}")
            first = pacs_segment(pacs, STUDY, model, cache=cache)
            rerun = pacs_segment(pacs, STUDY, model, cache=cache)
            agree = bool(np.array_equal(read_labels(out).array, read_labels(first.labels).array))
            records.append({"reference_s": round(reference_s, 3), "pacs": first.seconds, "pacs_rerun": rerun.seconds,
                            "stored": first.stored, "rerun_stored": rerun.stored, "fetched": first.fetched,
                            "agreement": agree})
        later = records[1:]

        def median(values: list[float]) -> float:
            return round(statistics.median(values), 3)

        reference = median([x["reference_s"] for x in later])
        pacs_total = median([x["pacs"]["total"] for x in later])
        stages = {s: median([x["pacs"][s] for x in later]) for s in STAGES}
        transfer = stages["find"] + stages["fetch"] + stages["store"]
        result = {
            "benchmark": "pacs", "quick": args.quick, "models": args.models, "k": args.k, "device": args.device,
            "series": {"instances": 20, "size": [512, 512, 20], "transfer_syntax": "JPEG 2000 Lossless",
                       "megabytes": round(sum(p.stat().st_size for p in series.iterdir()) / 2**20, 2)},
            "reference_s": reference, "pacs_s": pacs_total, "pacs_stages_s": stages,
            "pacs_rerun_s": median([x["pacs_rerun"]["total"] for x in later]),
            "overhead": round((pacs_total - reference) / reference, 4),
            "transfer_overhead": round(transfer / reference, 4),
            # the pacs segment stage writes the SEG too (--output-format both): its excess over the reference
            "segment_with_seg_over_reference": round(stages["segment"] / reference, 4),
            # the same ratios within each pacs call (its own segment stage: no noise between calls)
            "transfer_over_segment_stage": median([(x["pacs"]["find"] + x["pacs"]["fetch"] + x["pacs"]["store"])
                                                   / x["pacs"]["segment"] for x in later]),

            "agreement": all(x["agreement"] for x in records),
            "rounds": records, "load_average": load_average(), "machine": machine(),
        }
    finally:
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

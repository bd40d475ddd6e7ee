"""Effect of the relative-z retrieval prior on the two real CT cases (tests/assets/real-ct).

The paper retrieves with DINOv2 + Faiss only; ``ragsam segment`` adds a relative-z
prior (``score = cosine - w |rel_z_query - rel_z_support|``, ``w`` = 0.5 by default)
and ``ragsam experiment`` turns it off. This script measures, for each case used as
the query against a bank of the other case's slices, with ``w = 0`` and ``w = 0.5``:

* ``mean_abs_dz``: the mean ``|rel_z_query - rel_z_support|`` of the ``k`` retrieved
  supports - what the prior changes, and meaningful with any embedder;
* ``dice``: per-organ 3D Dice of the retrieval-only SAM 2 segmentation and its mean.

Models: ``--embedder tiny`` / ``--sam2 tiny`` are the randomly initialised test models
(the default, CPU, a minute); with them the Dice numbers say nothing about the method,
only ``mean_abs_dz`` does. Pass real weights (``facebook/dinov2-small``,
``facebook/sam2.1-hiera-tiny``) on a machine that has them.

Example:
    python bench/z_prior_effect.py --json bench/results/cpu/z_prior_effect.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_torch_threads, bench_parser, emit, machine  # noqa: E402

REAL_CT = Path(__file__).resolve().parents[1] / "tests" / "assets" / "real-ct"


def mean_abs_dz(bank, embedder, images: np.ndarray, k: int, weight: float) -> float:
    """Mean |rel_z_query - rel_z_support| over every query slice and its ``k`` supports."""
    depth = images.shape[0]
    rel_z = np.arange(depth) / (depth - 1)
    vectors = embedder.embed(images)
    hits = bank.query(vectors, k, embedder.identity, z_prior=weight or None, query_rel_z=rel_z if weight else None)
    return float(np.mean([abs(rel_z[z] - n.rel_z) for z, row in enumerate(hits) for n in row]))


def run(args) -> dict:
    from ragsam.data.cache_meta import CacheMeta
    from ragsam.data.cases import CaseRef, load_case
    from ragsam.data.label_maps import load_label_map
    from ragsam.data.prepare import PrepareOptions, prepare_dataset
    from ragsam.data.slice_dataset import SliceDataset
    from ragsam.data.slices import SliceSettings
    from ragsam.data.volume import write_labels
    from ragsam.evaluation.evaluate import EvaluationOptions, evaluate
    from ragsam.retrieval.bank import SupportBank
    from ragsam.retrieval.bank_build import BankOptions, build_bank
    from ragsam.retrieval.segment import RagSegmenter, SegmentOptions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_dataset(REAL_CT, work / "prepared", PrepareOptions(settings=SliceSettings(size=args.size),
                        label_map="btcv", split="none"))
        cases = sorted(CacheMeta.read(work / "prepared").cases)
        meta = SliceDataset(work / "prepared")
        lmap = load_label_map("btcv")
        for query in cases:
            support = next(c for c in cases if c != query)
            bank_dir = work / f"bank-{support}"
            build_bank(work / "prepared", bank_dir, BankOptions(embedder_weights=args.embedder,
                       cases=[support]), force=True)
            bank = SupportBank.load(bank_dir)
            embedder = bank.embedder(device=args.device)
            images = np.asarray(meta.arrays(query)[0], dtype=np.float32)
            segmenter = RagSegmenter(bank_dir, args.sam2, device=args.device)
            case = CacheMeta.read(work / "prepared").cases[query]
            gt = load_case(CaseRef(query, Path(str(case.image)), Path(str(case.labels)))).labels
            write_labels(gt.array, gt.geometry, work / f"gt-{query}.nii.gz", force=True)
            for weight in (0.0, 0.5):
                out = work / f"{query}-{weight}.nii.gz"
                segmenter.segment(str(case.image), out, SegmentOptions(k=args.k, z_prior=weight or None), force=True)
                result = evaluate(out, work / f"gt-{query}.nii.gz", EvaluationOptions(label_map=lmap,
                                  overlays=False))
                table = result.table()
                dice = {n: round(float(v), 4) for n, v in zip(table.organ_names, table.mean["dice"], strict=True)
                        if not np.isnan(v)}
                rows.append({"query": query, "bank": support, "z_prior": weight,
                             "mean_abs_dz": round(mean_abs_dz(bank, embedder, images, args.k, weight), 4),
                             "mean_dice": round(float(np.mean(list(dice.values()))), 4) if dice else None,
                             "dice": dice})
    return {"benchmark": "z_prior_effect", "machine": machine(), "embedder": args.embedder, "sam2": args.sam2,
            "k": args.k, "rows": rows}


def main() -> None:
    parser = bench_parser(__doc__, device_default="cpu")
    parser.add_argument("--embedder", default="tiny")
    parser.add_argument("--sam2", default="tiny")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="slice size of the cache (px)")
    args = parser.parse_args()
    apply_torch_threads(args.threads)
    emit(run(args), args.json)


if __name__ == "__main__":
    main()

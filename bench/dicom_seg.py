"""DICOM SEG output benchmark: seconds to write a case's labels as a SEG beside / instead of NIfTI.

On the shared DICOM series (20 x 512 x 512, ``tests/assets/real-ct/abdomen-ct-dicom``, copied
with its UIDs restored by ``tests/dicom_series.py``) and its real BTCV labels (8 organs), each
mode writes what ``predict`` / ``segment`` write per case with ``--output-format``:

* ``nifti`` (the reference mode, what ragsam wrote before): ``write_labels`` -> ``.nii.gz``;
* ``dicom-seg``: ``write_case(..., "dicom-seg")``: source headers read, SEG built by highdicom
  (one BINARY frame per non-empty organ and slice), written;
* ``both``: the NIfTI and the SEG;
* ``read``: ``read_dicom_seg`` of the written SEG back onto the series (what ``pacs add-support``
  does), checked equal to the labels voxel for voxel (``agreement``).

Modes alternate for ``--rounds`` rounds in one process; the fastest round of each is reported
(all rounds in ``seconds_all``) with the file sizes and the machine's load average.

Example:
    python bench/dicom_seg.py --rounds 5 --json bench/results/cpu/dicom_seg.json
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_parser, emit, machine  # noqa: E402
from modes import load_average  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERIES = REPO / "tests" / "assets" / "real-ct" / "abdomen-ct-dicom"
MODES = ("nifti", "dicom-seg", "both", "read")


def main(argv: list[str] | None = None) -> dict:
    parser = bench_parser(__doc__.split("\n\n")[0], device_default="cpu", device_help="unused (CPU only)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the fastest is reported")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from dicom_series import copy_series
    from ragsam.data.dicom_seg import read_dicom_seg
    from ragsam.data.label_maps import load_label_map
    from ragsam.data.volume import read_image, read_labels
    from ragsam.inference.outputs import write_case

    rounds = 1 if args.quick else max(1, args.rounds)
    with tempfile.TemporaryDirectory(prefix="ragsam-bench-seg-") as tmp:
        work = Path(tmp)
        folder = copy_series(SERIES / "dicom", work / "series")
        image = read_image(folder)
        labels = read_labels(SERIES / "labels.nii.gz", reference=read_image(SERIES / "dicom")).array
        names = load_label_map("btcv").labels
        seconds: dict[str, list[float]] = {m: [] for m in MODES}
        sizes: dict[str, int] = {}
        agreement = None
        for r in range(rounds):
            for mode in MODES:
                out = work / f"r{r}" / mode / "case.nii.gz"
                out.parent.mkdir(parents=True)
                start = time.perf_counter()
                if mode == "read":
                    back = read_dicom_seg(work / f"r{r}" / "dicom-seg" / "case.seg.dcm", image)
                else:
                    primary = out.with_name("case.seg.dcm") if mode == "dicom-seg" else out
                    written = write_case(labels, image, primary, mode, force=False, label_names=names,
                                         algorithm="benchmark", model_key="bench")
                seconds[mode].append(time.perf_counter() - start)
                if mode == "read":
                    agreement = float(np.mean(back == labels))
                else:
                    sizes[mode] = sum(p.stat().st_size for p in written)
    best = {m: round(min(v), 4) for m, v in seconds.items()}
    result = {
        "benchmark": "dicom_seg", "quick": bool(args.quick), "machine": machine(), "load_average": load_average(),
        "series": {"slices": int(labels.shape[0]), "rows": int(labels.shape[1]), "columns": int(labels.shape[2]),
                   "organs": sorted(int(o) for o in np.unique(labels) if o)},
        "rounds": rounds, "seconds": best, "seconds_all": {m: [round(s, 4) for s in v] for m, v in seconds.items()},
        "bytes": sizes, "agreement": agreement,
        "seg_over_nifti": round(best["dicom-seg"] / best["nifti"], 2),
        "both_extra_seconds": round(best["both"] - best["nifti"], 4),
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()

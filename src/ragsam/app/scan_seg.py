"""A scan's current labels (corrections included) as a DICOM SEG: "Download DICOM SEG" and "Save to PACS".

Both build the SEG here, through :func:`ragsam.data.dicom_seg.build_dicom_seg` (the one SEG
builder, also behind ``--output-format dicom-seg``), so a download and the SEG stored into the
PACS are the same instance (content-derived UIDs). The rule is the command line's
(:func:`ragsam.data.case_outputs.check_seg_inputs`): a SEG references its source DICOM series,
so only a scan whose input is a DICOM series (a zip upload or a PACS study) has one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ragsam.errors import InputError

#: The SEG's algorithm per app mode (the method the command line names).
ALGORITHMS = {"rag": "RAG", "finetuned": "fine-tuned SAM", "hybrid": "hybrid"}


def scan_seg(scan: Any, label_names: dict[int, str]) -> Any:
    """The ``highdicom.seg.Segmentation`` of the scan's current labels on its DICOM series.

    Args:
        scan: a :class:`ragsam.app.scans.Scan` (``input`` its NIfTI file or DICOM folder).
        label_names: the app's organs ``{id: name}`` (the SEG's segments; 0 ignored).
    Raises:
        InputError: one line, naming the scan (never a server path): a NIfTI upload (whatever its
            state), not segmented yet, or what :func:`~ragsam.data.dicom_seg.build_dicom_seg` refuses.
    """
    from ragsam.data.dicom_seg import build_dicom_seg
    from ragsam.data.volume import read_labels

    if not Path(scan.input).is_dir():
        raise InputError(None, f"scan {scan.name} is a NIfTI upload; a DICOM SEG needs the source DICOM series")
    if scan.state != "done" or not scan.runs:
        raise InputError(None, f"scan {scan.name} is not segmented yet")
    labels = read_labels(scan.labels_path)
    algorithm = ALGORITHMS.get(scan.mode, scan.mode)
    if scan.corrected:
        algorithm += " + corrections"
    names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}
    return build_dicom_seg(labels, Path(scan.input), names, algorithm=algorithm,
                           model_key=f"app-{scan.id}-run{scan.runs}")


def seg_bytes(seg: Any) -> bytes:
    """The SEG as a DICOM Part 10 file (what :func:`ragsam.data.dicom_seg.save_dicom_seg` writes)."""
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()

"""What ``predict`` and ``segment`` write per case: NIfTI labels, a DICOM SEG, or both (``--output-format``).

One rule for both commands:

* ``nifti`` (default): ``<case_id>.nii.gz`` in the output folder, or the file named by ``-o``.
* ``dicom-seg``: only the SEG, ``<case_id>.seg.dcm`` in the folder; for one case ``-o`` may name
  it (``ct.seg.dcm``) or a label file whose SEG name is then used (``ct.nii.gz`` -> ``ct.seg.dcm``).
* ``both``: the NIfTI as above and its SEG beside it, ``case.nii.gz`` -> ``case.seg.dcm``
  (:func:`ragsam.data.dicom_seg.seg_path_for`), recorded as a companion of the NIfTI in the
  case's resume sidecar (:mod:`ragsam.inference.case_runner`).

A SEG references its source series, so every input must be a DICOM series folder with the UIDs
a SEG references, and every organ of the label map needs a SNOMED CT code:
:func:`check_seg_inputs` refuses anything else before any model work. :func:`write_case` builds
the SEG before writing anything, so a case whose SEG cannot be built leaves no file.
heavy imports (SimpleITK, highdicom) happen inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ragsam.errors import InputError

OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")


def check_format(output_format: str) -> str:
    """The format, or :class:`InputError` naming the choices."""
    if output_format not in OUTPUT_FORMATS:
        raise InputError(None, f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    return output_format


def writes_seg(output_format: str) -> bool:
    """Whether the format includes a DICOM SEG."""
    return check_format(output_format) != "nifti"


def key_parts(output_format: str) -> dict[str, str]:
    """What the format adds to a case's model key: nothing for NIfTI (earlier runs' sidecars stay valid)."""
    return {} if check_format(output_format) == "nifti" else {"output_format": output_format}


def case_outputs(case_ids: list[str], output: str | os.PathLike,
                 output_format: str = "nifti") -> tuple[list[Path], list[tuple[Path, ...]]]:
    """``(primary output per case, companions per case)`` for the format (see the module docstring).

    Raises:
        InputError: as :func:`ragsam.utils.paths.case_output_paths`.
    """
    from ragsam.data.dicom_seg import SEG_SUFFIX, seg_path_for
    from ragsam.utils.paths import case_output_paths

    check_format(output_format)
    output = Path(output)
    if output_format == "dicom-seg":
        if len(case_ids) == 1 and output.name.lower().endswith(".dcm"):
            return [output], [()]
        return [seg_path_for(p) for p in case_output_paths(case_ids, output)], [()] * len(case_ids)
    primary = case_output_paths(case_ids, output)
    if output_format == "both":
        if len(case_ids) == 1 and output.name.lower().endswith(SEG_SUFFIX):
            raise InputError(output, "with --output-format both, -o names the NIfTI file (its SEG goes beside it)")
        return primary, [(seg_path_for(p),) for p in primary]
    return primary, [()] * len(case_ids)


def check_seg_inputs(refs: Sequence[Any], label_names: Mapping[int, str] | None, output_format: str,
                     series_uid: str | None = None, label_source: str | os.PathLike | None = None) -> None:
    """Refuse, before any model work, inputs a SEG cannot be written for.

    Args:
        refs: the cases (``CaseRef``; ``image`` a file or DICOM folder).
        label_names: ``{id: organ name}`` the model writes (``None``: not known, refused for a SEG).
        output_format: nothing is checked for ``nifti``.
        series_uid: the series read from each folder.
        label_source: where the label map came from (named in messages).
    Raises:
        InputError: an input that is not a DICOM series folder (one line naming it), a series
            without the UIDs a SEG references, an organ without a SNOMED CT code.
    """
    if not writes_seg(output_format):
        return
    from ragsam.data.dicom_seg import organ_code, source_datasets

    for ref in refs:
        if not Path(ref.image).is_dir():
            raise InputError(ref.image, f"is not a DICOM series folder: --output-format {output_format} writes a DICOM "
                                        "SEG, which references its source DICOM series; use --output-format nifti")
    if not label_names:
        raise InputError(label_source, "no label map to name the SEG's segments")
    for organ_id, name in sorted(label_names.items()):
        if organ_id:
            organ_code(name, label_source)
    for ref in refs:
        source_datasets(ref.image, series_uid)  # the UIDs a SEG references


def write_case(labels: np.ndarray, image: Any, output: Path, output_format: str, *, force: bool,
               label_names: Mapping[int, str] | None = None, series_uid: str | None = None,
               algorithm: str = "", model_key: str = "") -> list[Path]:
    """Write one case's labels in ``output_format``: the SEG is built first, so a SEG that cannot be
    built leaves nothing; then the NIfTI (``nifti`` / ``both``), then the SEG file.

    Args:
        labels: integer ``(z, y, x)`` on ``image.geometry``.
        image: the case's :class:`~ragsam.data.volume.Volume` (``path``: its file or DICOM folder).
        output: the primary output of :func:`case_outputs`.
        label_names, series_uid, algorithm, model_key: for the SEG (see
            :func:`ragsam.data.dicom_seg.build_dicom_seg`).
    Returns:
        The files written, primary first.
    """
    from ragsam.data.volume import Volume, write_labels

    seg = None
    if writes_seg(output_format):
        from ragsam.data.dicom_seg import build_dicom_seg

        seg = build_dicom_seg(Volume(labels, image.geometry, output), image.path, dict(label_names or {}),
                              algorithm=algorithm, model_key=model_key, series_uid=series_uid)
    written = []
    if output_format != "dicom-seg":
        written.append(write_labels(labels, image.geometry, output, force=force))
    if seg is not None:
        from ragsam.data.dicom_seg import save_dicom_seg, seg_path_for

        written.append(save_dicom_seg(seg, output if output_format == "dicom-seg" else seg_path_for(output), force))
    return written

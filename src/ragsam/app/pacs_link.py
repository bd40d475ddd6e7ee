"""The app's PACS (``ragsam app --pacs URL``): list studies, open a CT series as a scan, save a scan as a SEG.

Everything goes through :mod:`ragsam.pacs` (the code of ``ragsam pacs``): credentials from
the environment or ``--pacs-credentials``, the instance cache, the series checks, one-line
errors. Opening a study fetches its CT series into the cache and hands the series folder to
:meth:`ragsam.app.scans.ScanStore.adopt_series`, which segments it like an upload; "Save to
PACS" builds a DICOM SEG of the scan's current labels (corrections included) on that series
and stores it into the same study, unless the study already holds that very SEG.
"""

from __future__ import annotations

import os
from typing import Any

from ragsam.errors import InputError


class PacsLink:
    """One configured DICOMweb server for the app.

    Args:
        url: the DICOMweb root. credentials: ``--pacs-credentials`` file (else the environment).
        cache: the instance cache folder (default: ``ragsam pacs``'s).
        label_names: the app's organs ``{id: name}`` (the SEG's segments).
    Raises:
        InputError: a bad URL or credentials file (at start, not in the page).
    """

    def __init__(self, url: str, credentials: str | os.PathLike | None, cache: str | os.PathLike | None,
                 label_names: dict[int, str]) -> None:
        from ragsam.pacs.cache import InstanceCache
        from ragsam.pacs.client import Pacs
        from ragsam.pacs.credentials import load_credentials

        self.pacs = Pacs(url, load_credentials(credentials))
        self.cache = InstanceCache(cache)
        self.label_names = {int(k): str(v) for k, v in label_names.items() if int(k) != 0}

    def studies(self) -> list[dict[str, Any]]:
        """The studies (QIDO-RS) with their CT series, for the page."""
        from dataclasses import asdict

        return [asdict(row) for row in self.pacs.studies(limit=200)]

    def open(self, scans: Any, study_uid: str, series_uid: str | None, mode: str) -> Any:
        """Fetch the study's CT series and queue its segmentation as a scan (returns the Scan)."""
        from ragsam.pacs.series import fetch_series, find_series

        scans.check_request("series.zip", mode)  # the mode is possible before anything is fetched
        item = find_series(self.pacs, study_uid, series_uid)
        series_uid = str(item["0020000E"]["Value"][0])
        fetched = fetch_series(self.pacs, self.cache, study_uid, series_uid)
        name = f"PACS series {fetched.description or series_uid}"
        return scans.adopt_series(name, fetched.folder, mode, {"study": study_uid, "series": series_uid})

    def save(self, scan: Any) -> dict[str, Any]:
        """Store the scan's current labels as a DICOM SEG (:func:`ragsam.app.scan_seg.scan_seg`) into its study."""
        from ragsam.app.scan_seg import scan_seg

        origin = getattr(scan, "origin", None)
        if not origin:
            raise InputError(None, f"scan {scan.name} did not come from the PACS; open a PACS study to save to it")
        seg = scan_seg(scan, self.label_names)
        stored = not self.pacs.has_instance(origin["study"], str(seg.SOPInstanceUID))
        if stored:
            self.pacs.store(seg, origin["study"])
        return {"seg": str(seg.SOPInstanceUID), "series": str(seg.SeriesInstanceUID), "study": origin["study"],
                "stored": stored}

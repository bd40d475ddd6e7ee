"""The settings key of a prepared case: everything besides its input files that changes it.

The files' part of a case's fingerprint is :func:`ragsam.utils.file_fingerprint.fingerprint_case`
(shared with :mod:`ragsam.utils.case_runner`); :mod:`ragsam.data.prepare` combines the two.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ragsam.data.cache_meta import CACHE_VERSION
from ragsam.data.slices import SliceSettings


def settings_key(settings: SliceSettings, label_map: Any, series_uid: str | None) -> str:
    """Everything besides the input files that changes a cached case (context does not)."""
    payload = {"version": CACHE_VERSION, "window": list(settings.window), "size": int(settings.size),
               "labels": {str(k): v for k, v in sorted(label_map.labels.items())},
               "source_maps": {k: {str(a): b for a, b in sorted(m.items())} for k, m in label_map.source_maps.items()},
               "series_uid": series_uid}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()

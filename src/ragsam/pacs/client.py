"""A DICOMweb connection (QIDO-RS, WADO-RS, STOW-RS) on ``dicomweb-client``, with one-line errors.

:class:`Pacs` wraps :class:`dicomweb_client.DICOMwebClient` and turns every network or HTTP
failure into an :class:`~ragsam.errors.InputError` naming the URL and what to do (PACS down
or cut, wrong URL, 401, 403, unknown study), so the command line prints one line and exits 2.

Transport rules (:class:`_Transport`, mounted on the session):

* every request has a timeout (10 s to connect, ``read_timeout`` s to answer), so a PACS that
  hangs never hangs ragsam;
* a STOW-RS body is sent with a ``Content-Length``, never chunked (Orthanc's DICOMweb plugin
  of Debian 12 rejects chunked multipart bodies: "Garbage between two items"), and its upload
  progress can be followed (``store(..., progress=)``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ragsam.errors import InputError
from ragsam.pacs.credentials import Credentials

#: A DICOM UID: digits in dot-separated components, at most 64 characters (PS3.5 9.1). UIDs name
#: cache files, so anything else a PACS sends is refused (no path can escape the cache).
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
CONNECT_TIMEOUT_S = 10.0
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)  # as stored: no transcoding on the server


def check_uid(uid: str, what: str, where: str | None = None) -> str:
    """``uid`` if it is a valid DICOM UID, else an :class:`InputError` naming ``what``."""
    if not isinstance(uid, str) or len(uid) > 64 or not UID_PATTERN.match(uid):
        raise InputError(where, f"{what} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def tag_value(item: dict[str, Any], tag: str, default: Any = None) -> Any:
    """First value of ``tag`` (8 hex digits) in a DICOM JSON item; person names as text."""
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return default
    value = values[0]
    if isinstance(value, dict):  # PN: {"Alphabetic": "Doe^John"}
        return value.get("Alphabetic", default)
    return value


def tag_values(item: dict[str, Any], tag: str) -> list[Any]:
    """Every value of ``tag`` in a DICOM JSON item."""
    return list((item.get(tag) or {}).get("Value") or [])


class _UploadBody:
    """A request body read in blocks, reporting ``progress(sent, total)`` before each block."""

    def __init__(self, data: bytes, progress: Callable[[int, int], None]) -> None:
        self.data = memoryview(data)
        self.sent = 0
        self.progress = progress

    def __len__(self) -> int:
        return len(self.data)

    def read(self, size: int = -1) -> bytes:
        self.progress(self.sent, len(self.data))
        end = len(self.data) if size is None or size < 0 else min(len(self.data), self.sent + size)
        block = bytes(self.data[self.sent:end])
        self.sent = end
        return block


def _transport(read_timeout: float) -> Any:
    from requests.adapters import HTTPAdapter

    class _Transport(HTTPAdapter):
        """Timeouts on every request; upload progress of bodies while :attr:`upload_progress` is set."""

        upload_progress: Callable[[int, int], None] | None = None

        def send(self, request: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = (CONNECT_TIMEOUT_S, read_timeout)
            if self.upload_progress is not None and isinstance(request.body, bytes) and request.body:
                request.body = _UploadBody(request.body, self.upload_progress)
            return super().send(request, **kwargs)

    return _Transport()


@dataclass(frozen=True)
class StudyRow:
    """One study as QIDO-RS lists it."""

    study_uid: str
    patient_name: str
    patient_id: str
    date: str
    description: str
    modalities: list[str]
    series: int | None
    instances: int | None


class Pacs:
    """A DICOMweb server at ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web`` for Orthanc).

    Args:
        url: the DICOMweb root (``http`` or ``https``).
        credentials: see :mod:`ragsam.pacs.credentials`.
        read_timeout: seconds to wait for an answer (a whole series can take a while).
    Raises:
        InputError: not an http(s) URL.
    """

    def __init__(self, url: str, credentials: Credentials | None = None, read_timeout: float = 300.0) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InputError(url, "not a DICOMweb URL; expected http(s)://HOST[:PORT]/PATH, "
                                  "e.g. http://127.0.0.1:8042/dicom-web (Orthanc)")
        self.url = url.rstrip("/")
        self.credentials = credentials or Credentials()
        session = requests.Session()
        session.trust_env = False  # no ~/.netrc credentials or proxies picked up behind the user's back
        if self.credentials.token:
            session.headers["Authorization"] = f"Bearer {self.credentials.token}"
        elif self.credentials.user:
            session.auth = (self.credentials.user, self.credentials.password or "")
        self._transport = _transport(read_timeout)
        session.mount("http://", self._transport)
        session.mount("https://", self._transport)
        try:
            self.client = DICOMwebClient(self.url, session=session, timeout=(CONNECT_TIMEOUT_S, read_timeout),
                                         chunk_size=1 << 62)  # never chunked (module docstring)
        except ValueError as exc:
            raise InputError(url, f"not a usable DICOMweb URL ({exc})") from None
        # 429/503/504 are retried a little (a busy PACS); everything else fails at once.
        self.client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=500)

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Turn network and HTTP failures of the block into one-line :class:`InputError` s."""
        import requests

        try:
            yield
        except requests.HTTPError as exc:
            raise InputError(self.url, self._http_problem(exc, what)) from None
        except requests.Timeout:
            raise InputError(self.url, f"the PACS did not answer in time while {what}") from None
        except requests.ConnectionError as exc:
            refused = isinstance(_root_cause(exc), ConnectionRefusedError)
            if refused:
                raise InputError(self.url, f"cannot connect to the PACS while {what} (connection refused); "
                                           "is it running, and is the URL right?") from None
            raise InputError(self.url, f"the connection to the PACS was lost while {what} "
                                       f"({type(_root_cause(exc)).__name__}); run the command again") from None
        except ValueError as exc:  # an answer that is not DICOM JSON / multipart DICOM
            raise InputError(self.url, f"the server's answer is not DICOMweb while {what} ({exc}); is the URL "
                                       "the DICOMweb root (e.g. http://HOST:8042/dicom-web)?") from None

    def _http_problem(self, exc: Any, what: str) -> str:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401:
            return (f"the PACS refused the credentials while {what} (HTTP 401; {self.credentials.describe()}); "
                    "set RAGSAM_PACS_USER and RAGSAM_PACS_PASSWORD, RAGSAM_PACS_TOKEN or --credentials FILE")
        if status == 403:
            return f"the PACS does not allow {self.credentials.describe()} to do this (HTTP 403) while {what}"
        if status == 404:
            return (f"not found (HTTP 404) while {what}; is the URL the DICOMweb root "
                    "(e.g. http://HOST:8042/dicom-web for Orthanc)?")
        return f"the PACS answered HTTP {status} while {what}"

    # ----- QIDO-RS -----
    def studies(self, limit: int = 100, offset: int = 0, filters: dict[str, str] | None = None) -> list[StudyRow]:
        """Studies (QIDO-RS), at most ``limit`` from ``offset``; ``filters`` are QIDO matching keys."""
        fields = ["PatientName", "PatientID", "StudyDate", "StudyDescription", "ModalitiesInStudy",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"]
        with self.calling("listing studies"):
            found = self.client.search_for_studies(limit=limit, offset=offset, fields=fields,
                                                   search_filters=dict(filters or {}))
        rows = []
        for item in found:
            series, instances = tag_value(item, "00201206"), tag_value(item, "00201208")
            rows.append(StudyRow(str(tag_value(item, "0020000D", "")), str(tag_value(item, "00100010", "") or ""),
                                 str(tag_value(item, "00100020", "") or ""), str(tag_value(item, "00080020", "") or ""),
                                 str(tag_value(item, "00081030", "") or ""), [str(m) for m in tag_values(item, "00080061")],
                                 None if series is None else int(series), None if instances is None else int(instances)))
        return rows

    def study_exists(self, study_uid: str) -> bool:
        with self.calling(f"looking for study {study_uid}"):
            return bool(self.client.search_for_studies(search_filters={"StudyInstanceUID": study_uid}))

    def series(self, study_uid: str, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The series of a study (QIDO-RS), DICOM JSON items."""
        fields = ["Modality", "SeriesDescription", "SeriesNumber", "NumberOfSeriesRelatedInstances"]
        with self.calling(f"listing the series of study {study_uid}"):
            return self.client.search_for_series(study_uid, fields=fields, search_filters=dict(filters or {}))

    def instances(self, study_uid: str, series_uid: str, filters: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """The instances of a series (QIDO-RS), DICOM JSON items (SOP class and frames included)."""
        fields = ["SOPClassUID", "NumberOfFrames", "InstanceNumber"]
        out: list[dict[str, Any]] = []
        with self.calling(f"listing the instances of series {series_uid}"):
            while True:  # page through: a server may cap the answers of one query
                page = self.client.search_for_instances(study_uid, series_uid, fields=fields, offset=len(out),
                                                        search_filters=dict(filters or {}))
                if not page:
                    return out
                out.extend(page)

    def find_instances(self, study_uid: str, filters: dict[str, str]) -> list[dict[str, Any]]:
        """Instances of a study matching ``filters`` (QIDO-RS), DICOM JSON items with their series."""
        fields = ["SOPClassUID", "SeriesInstanceUID", "Modality", "InstanceNumber"]
        with self.calling(f"looking for instances of study {study_uid}"):
            return self.client.search_for_instances(study_uid, fields=fields, search_filters=dict(filters))

    def has_instance(self, study_uid: str, sop_uid: str) -> bool:
        """Whether the study holds an instance with this SOP Instance UID."""
        return bool(self.find_instances(study_uid, {"SOPInstanceUID": sop_uid}))

    # ----- WADO-RS -----
    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> Any:
        """One instance (WADO-RS) in the transfer syntax it is stored in, as a pydicom Dataset."""
        with self.calling(f"fetching instance {sop_uid}"):
            return self.client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=ANY_TRANSFER_SYNTAX)

    # ----- STOW-RS -----
    def store(self, dataset: Any, study_uid: str, progress: Callable[[int, int], None] | None = None) -> None:
        """Store one instance into ``study_uid`` (STOW-RS); ``progress(sent_bytes, total_bytes)``.

        One instance is stored whole or not at all (a cut body is rejected by the server).

        Raises:
            InputError: the server refused it (its reason quoted) or the connection failed.
        """
        self._transport.upload_progress = progress
        try:
            with self.calling(f"storing {dataset.SOPInstanceUID} into study {study_uid}"):
                answer = self.client.store_instances([dataset], study_instance_uid=study_uid)
        finally:
            self._transport.upload_progress = None
        failed = getattr(answer, "FailedSOPSequence", None) or []
        if failed:
            reason = getattr(failed[0], "FailureReason", "?")
            raise InputError(self.url, f"the PACS refused to store {dataset.SOPInstanceUID} (failure reason {reason})")


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while True:
        nxt = exc.__cause__ or exc.__context__
        for arg in getattr(exc, "args", ()):  # urllib3 keeps the OSError in its reason / args
            if isinstance(arg, BaseException):
                nxt = nxt or arg
        reason = getattr(exc, "reason", None)
        if isinstance(reason, BaseException):
            nxt = reason
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(exc))
        exc = nxt

"""The app's HTTP interface (Starlette): the page, files from the given folders, and a small JSON API.

Routes::

    GET  /                               the page (static/index.html)
    GET  /static/...                     page scripts, NiiVue bundle
    GET  /files/<root>/<path>            a file inside one of the given folders (resolve_inside)
    GET  /api/info                       organs (names, colours), modes, window presets, k
    GET  /api/cases                      dataset cases with ground truth and predictions
    GET  /api/metrics?case=&method=      per-organ Dice / HD95 of a prediction against ground truth
    GET  /api/supports?root=&path=&mm=   supports retrieved for the slice through a RAS mm point
    GET  /api/thumb/<case>/<z>.png       a bank slice with its labels
    GET  /api/scans, /api/scans/<id>     uploaded scans and their progress
    POST /api/scans?name=&mode=          upload (raw body) and segment
    GET  /api/scans/<id>/labels?format=  download the current labels: nifti (default) or dicom-seg
                                         (a DICOM series' scans only; ragsam.app.scan_seg)
    PUT  /api/scans/<id>/labels          save corrected labels (NIfTI body on the input grid)
    POST /api/scans/<id>/add             add the corrected slices to the bank
    POST /api/scans/<id>/resegment       segment again with the corrected slices as supports
    GET  /api/pacs/studies               studies of the configured PACS (``--pacs``; 404 without one)
    POST /api/pacs/open?study=&series=&mode=   fetch a study's CT series and segment it as a scan
    POST /api/scans/<id>/pacs            store the scan's labels as a DICOM SEG into its PACS study

Safety: every request must carry the session token (on every address, loopback too, unless
the app was started with ``--no-token``): query ``token`` (the page then sets an HttpOnly,
SameSite=Strict cookie and redirects to a URL without it), header ``X-Ragsam-Token`` or
that cookie; the ``Host`` header must name the address the app serves (no DNS rebinding);
state-changing requests need the header ``X-Ragsam: 1`` (a cross-site form cannot send it);
request bodies above the upload limit are refused with 413 (by ``Content-Length`` before
anything is read, else as they stream to disk). Every response carries :data:`SECURITY_HEADERS`
(a Content-Security-Policy allowing only the app's own scripts and styles, no framing, no
MIME sniffing, no referrer, no caching). User errors come back as ``{"error": "<name>:
<problem>"}`` with status 400, the command line's one-line message, with server folders
replaced by their names (``<data>``, the upload's name).
"""

from __future__ import annotations

import asyncio
import hmac
import math
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ragsam.app.catalog import Catalog, organ_table
from ragsam.app.engine import Engine
from ragsam.app.scan_seg import scan_seg, seg_bytes
from ragsam.app.scans import MODES, ScanStore
from ragsam.app.uploads import MAX_RECEIVING, public_message, receive_body, remove, upload_name
from ragsam.errors import InputError, RagsamError

STATIC = Path(__file__).parent / "static"
WINDOWS = {"abdomen": [-125, 275], "soft tissue": [-160, 240], "liver": [-45, 155], "bone": [-450, 1050],
           "lung": [-1350, 150]}
COOKIE = "ragsam_token"
#: Sent with every response. NiiVue draws with WebGL and reads volumes with fetch (blob:/data:
#: URLs for its own buffers and fonts); nothing needs inline script, eval or a foreign origin.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data: blob:; connect-src 'self' data: blob:; font-src 'self' data:; "
                               "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
#: Files from the given folders and uploads are data, never a page or a script, whatever their name.
FILE_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'"
#: The formats of ``GET /api/scans/<id>/labels`` (``--output-format``'s single-file ones).
DOWNLOADS = ("nifti", "dicom-seg")


class Guard:
    """ASGI middleware: security headers on every response; token, Host check, CSRF header, body size limit."""

    def __init__(self, app: ASGIApp, token: str | None, hosts: set[str], max_bytes: int, cookie: str = COOKIE) -> None:
        self.app, self.token, self.hosts, self.max_bytes, self.cookie = app, token, hosts, max_bytes, cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the app has none: refuse before any route sees it
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    if key == "content-security-policy" and key in headers:
                        continue  # a route's stricter policy (FILE_CSP) stays
                    headers[key] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        refusal = self.refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)

    def refusal(self, request: Request) -> Response | None:
        """The response refusing ``request``, or None when it may proceed."""
        host = request.headers.get("host", "")
        if host not in self.hosts:
            return JSONResponse({"error": f"host {host[:100]!r} is not served here"}, 403)
        given = request.query_params.get("token") or request.headers.get("x-ragsam-token") \
            or request.cookies.get(self.cookie) or ""
        if self.token is not None and not hmac.compare_digest(given.encode(), self.token.encode()):
            return JSONResponse({"error": "missing or wrong token (use the URL printed at start)"}, 401)
        if request.method not in ("GET", "HEAD") and request.headers.get("x-ragsam") != "1":
            return JSONResponse({"error": "missing X-Ragsam header"}, 403)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            try:
                name = upload_name(request.query_params.get("name", "")) + ": "
            except InputError:
                name = ""
            return JSONResponse({"error": f"{name}upload larger than the limit of {self.max_bytes >> 20} MiB"}, 413)
        return None


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def build_app(catalog: Catalog, engine: Engine, label_names: dict[int, str], token: str | None = None,
              hosts: set[str] | None = None, max_upload_mb: int = 1024, cookie: str = COOKIE,
              pacs: Any = None) -> Starlette:
    """The ASGI application of one session (see the module docstring for the routes).

    ``pacs``: a :class:`ragsam.app.pacs_link.PacsLink`, or None (no PACS routes answer).
    """
    scans = ScanStore(catalog.roots["scans"], engine)
    limit = int(max_upload_mb) << 20
    places = {folder: f"<{name}>" for name, folder in catalog.roots.items()}
    places |= {Path(d): f"<{n}>" for n, d in (("bank", engine.bank_dir), ("run", engine.run_dir)) if d is not None}
    receiving = [0]

    def _error(exc: RagsamError, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": public_message(str(exc), places)}, status)

    async def page(request: Request) -> Response:
        if token is not None and "token" in request.query_params:  # the Guard checked it: keep it out of the URL
            response = RedirectResponse("/", 303)
            response.set_cookie(cookie, token, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html")

    async def files(request: Request) -> Response:
        try:
            path = catalog.resolve(request.path_params["root"], request.path_params["path"])
        except InputError as exc:
            return _error(exc, 403)
        if not path.is_file():
            return JSONResponse({"error": "no such file"}, 404)
        return FileResponse(path, media_type="application/octet-stream",
                            headers={"content-security-policy": FILE_CSP})

    async def info(request: Request) -> Response:
        return JSONResponse({"organs": organ_table(label_names), "windows": WINDOWS, "k": engine.k,
                             "modes": [m for m in MODES if _mode_ok(engine, m)],
                             "bank": engine.bank_dir is not None, "run": engine.run_dir is not None,
                             "pacs": pacs is not None})

    async def cases(request: Request) -> Response:
        try:
            listed = await asyncio.to_thread(catalog.cases)
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse([c.to_json() for c in listed])

    async def metrics(request: Request) -> Response:
        try:
            rows = await asyncio.to_thread(_metrics, catalog, label_names, request.query_params.get("case", ""),
                                           request.query_params.get("method", ""))
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse(rows)

    async def supports(request: Request) -> Response:
        q = request.query_params
        try:
            path = catalog.resolve(q.get("root", ""), q.get("path", ""))
            mm = tuple(float(v) for v in q.get("mm", "").split(","))
            if len(mm) != 3:
                raise ValueError
            z = await asyncio.to_thread(engine.canonical_z, path, mm)
            exclude = [q["case"]] if q.get("case") else []
            hits = await asyncio.to_thread(engine.supports, path, z, exclude)
        except ValueError:
            return JSONResponse({"error": "mm must be three numbers x,y,z (RAS mm)"}, 400)
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse({"z": z, "supports": hits})

    async def thumb(request: Request) -> Response:
        try:
            png = await asyncio.to_thread(engine.thumbnail, request.path_params["case"], request.path_params["z"])
        except RagsamError as exc:
            return _error(exc, 404)
        return Response(png, media_type="image/png")

    async def scan_list(request: Request) -> Response:
        return JSONResponse([s.to_json() for s in scans.all()])

    async def scan_create(request: Request) -> Response:
        q = request.query_params
        try:
            name = scans.check_request(q.get("name", ""), q.get("mode", "rag"))
        except RagsamError as exc:
            return _error(exc)
        if receiving[0] >= MAX_RECEIVING:
            return JSONResponse({"error": f"{name}: {MAX_RECEIVING} uploads are already arriving; "
                                          "try again when one is done"}, 503)
        receiving[0] += 1
        staged = scans.staging()
        try:
            try:
                await receive_body(request, staged / "body", limit)
            except InputError as exc:
                remove(staged)
                return JSONResponse({"error": f"{name}: {exc.problem}"}, 413)
            except OSError as exc:
                remove(staged)
                return JSONResponse({"error": f"{name}: could not be stored ({exc.strerror})"}, 400)
            except ClientDisconnect:
                remove(staged)
                return Response(status_code=400)  # nobody is listening
            except BaseException:
                remove(staged)
                raise
        finally:
            receiving[0] -= 1
        try:
            scan = await asyncio.to_thread(scans.create, name, staged, q.get("mode", "rag"))
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse(scan.to_json(), 201)

    async def scan_get(request: Request) -> Response:
        try:
            return JSONResponse(scans.get(request.path_params["id"]).to_json())
        except RagsamError as exc:
            return _error(exc, 404)

    async def scan_download(request: Request) -> Response:
        try:
            scan = scans.get(request.path_params["id"])
        except RagsamError as exc:
            return _error(exc, 404)
        kind = request.query_params.get("format", "nifti")
        if kind not in DOWNLOADS:
            return JSONResponse({"error": f"format must be one of {', '.join(DOWNLOADS)}, got {kind[:40]!r}"}, 400)
        if kind == "nifti":
            if not scan.runs:
                return JSONResponse({"error": f"scan {scan.name} is not segmented yet"}, 400)
            return FileResponse(scan.labels_path, media_type="application/gzip", headers={
                "content-disposition": f'attachment; filename="scan-{scan.id}_labels.nii.gz"',
                "content-security-policy": FILE_CSP})
        try:
            data = await asyncio.to_thread(lambda: seg_bytes(scan_seg(scan, label_names)))
        except RagsamError as exc:
            return JSONResponse({"error": public_message(scan.public(str(exc)), places)}, 400)
        return Response(data, media_type="application/dicom", headers={
            "content-disposition": f'attachment; filename="scan-{scan.id}_labels.seg.dcm"',
            "content-security-policy": FILE_CSP})

    async def scan_labels(request: Request) -> Response:
        try:
            scan = scans.get(request.path_params["id"])
        except RagsamError as exc:
            return _error(exc, 404)
        upload = scan.folder / f".correction-{id(request):x}.upload"
        try:
            await receive_body(request, upload, limit)
        except InputError as exc:
            upload.unlink(missing_ok=True)
            return JSONResponse({"error": f"correction: {exc.problem}"}, 413)
        except (OSError, ClientDisconnect):
            upload.unlink(missing_ok=True)
            return JSONResponse({"error": "correction: could not be stored"}, 400)
        try:
            corrected = await asyncio.to_thread(scans.save_correction, scan, upload)
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse({"corrected": corrected})

    async def scan_add(request: Request) -> Response:
        try:
            added = await asyncio.to_thread(scans.add_to_bank, scans.get(request.path_params["id"]))
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse(added)

    async def scan_resegment(request: Request) -> Response:
        try:
            scan = scans.get(request.path_params["id"])
            await asyncio.to_thread(scans.resegment, scan)
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse(scan.to_json())

    async def pacs_studies(request: Request) -> Response:
        if pacs is None:
            return JSONResponse({"error": "no PACS configured (start the app with --pacs URL)"}, 404)
        try:
            return JSONResponse(await asyncio.to_thread(pacs.studies))
        except RagsamError as exc:
            return _error(exc)

    async def pacs_open(request: Request) -> Response:
        if pacs is None:
            return JSONResponse({"error": "no PACS configured (start the app with --pacs URL)"}, 404)
        q = request.query_params
        try:
            scan = await asyncio.to_thread(pacs.open, scans, q.get("study", ""), q.get("series") or None,
                                           q.get("mode", "rag"))
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse(scan.to_json(), 201)

    async def scan_pacs(request: Request) -> Response:
        if pacs is None:
            return JSONResponse({"error": "no PACS configured (start the app with --pacs URL)"}, 404)
        try:
            saved = await asyncio.to_thread(pacs.save, scans.get(request.path_params["id"]))
        except RagsamError as exc:
            return _error(exc)
        return JSONResponse(saved)

    routes = [
        Route("/", page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/files/{root}/{path:path}", files),
        Route("/api/info", info),
        Route("/api/cases", cases),
        Route("/api/metrics", metrics),
        Route("/api/supports", supports),
        Route("/api/thumb/{case}/{z:int}.png", thumb),
        Route("/api/scans", scan_list, methods=["GET"]),
        Route("/api/scans", scan_create, methods=["POST"]),
        Route("/api/scans/{id}", scan_get),
        Route("/api/scans/{id}/labels", scan_download, methods=["GET"]),
        Route("/api/scans/{id}/labels", scan_labels, methods=["PUT"]),
        Route("/api/scans/{id}/add", scan_add, methods=["POST"]),
        Route("/api/scans/{id}/resegment", scan_resegment, methods=["POST"]),
        Route("/api/scans/{id}/pacs", scan_pacs, methods=["POST"]),
        Route("/api/pacs/studies", pacs_studies),
        Route("/api/pacs/open", pacs_open, methods=["POST"]),
    ]
    async def internal(request: Request, exc: Exception) -> Response:  # one line, no traceback, no path
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)

    app = Starlette(routes=routes, exception_handlers={Exception: internal}, middleware=[Middleware(Guard, token=token, hosts=hosts or set(),
                                                          max_bytes=limit, cookie=cookie)])
    app.state.scans = scans
    return app


def _mode_ok(engine: Engine, mode: str) -> bool:
    try:
        engine.check_mode(mode)
        return True
    except InputError:
        return False


def _metrics(catalog: Catalog, label_names: dict[int, str], case_id: str, method: str) -> list[dict[str, Any]]:
    """Dice / HD95 (mm) per organ of one prediction, with :func:`compute_case_metrics` as the reports use it."""
    from ragsam.data.volume import read_image, read_labels
    from ragsam.evaluation.metrics import compute_case_metrics, spacing_zyx

    entry = catalog.case(case_id)
    if entry.labels is None:
        raise InputError(None, f"case {case_id!r} has no ground truth")
    if method not in entry.predictions:
        raise InputError(None, f"case {case_id!r} has no prediction {method!r}")
    image = read_image(catalog.resolve(*entry.image))
    gt = read_labels(catalog.resolve(*entry.labels), reference=image)
    pred = read_labels(catalog.resolve(*entry.predictions[method]), reference=image)
    organs = sorted({o for o in _present(gt.array) | _present(pred.array)
                     if o in label_names and o > 0})
    rows = compute_case_metrics(pred.array, gt.array, spacing_zyx(image.geometry.spacing), organs)
    return [{"id": r.organ_id, "name": label_names.get(r.organ_id, str(r.organ_id)), "dice": _clean(r.dice),
             "hd95": _clean(r.hd95)} for r in rows]


def _present(array) -> set[int]:
    import numpy as np

    return {int(v) for v in np.unique(array)}

"""The app's HTTP rules without a browser: token, Host check, headers, path escapes, upload limits and validation.

The hostile uploads (bombs, links, clashes) and the memory bound are in test_attacks.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from pathlib import Path

import pytest
from app_fixtures import RunningServer, free_port

from ragsam.errors import InputError


def _start(world, host="127.0.0.1", **kwargs):
    from ragsam.app import AppOptions, create_app

    session = create_app(AppOptions(bank=world["bank"], data=world["data"], predictions=(world["predictions"],),
                                    host=host, port=free_port(), state=world["root"] / f"work-{host}",
                                    sam2_weights="tiny", k=2, **kwargs))
    return RunningServer(session)


@pytest.fixture(scope="module")
def local(world):
    server = _start(world, max_upload_mb=1)
    yield server
    server.stop()


def _request(server, method, path, body=None, headers=None, token=True, full=False):
    """``(status, JSON or bytes)`` (``full``: and the response); the session's token is sent unless ``token=False``."""
    conn = http.client.HTTPConnection(server.session.host, server.session.port, timeout=60)
    sent = {"X-Ragsam": "1", **(headers or {})}
    if token and server.session.token:
        sent.setdefault("X-Ragsam-Token", server.session.token)
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    with contextlib.suppress(ValueError):
        data = json.loads(data)
    return (response.status, data, response) if full else (response.status, data)


def wait_for_scan(server, scan_id: str, timeout_s: float = 600) -> dict:
    """The scan's JSON once its segmentation has finished (state ``done`` or ``error``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, scan = _request(server, "GET", f"/api/scans/{scan_id}")
        assert status == 200
        if scan["state"] in ("done", "error"):
            return scan
        time.sleep(0.2)
    raise AssertionError("the scan did not finish")


def test_another_host_needs_the_token(world):
    server = _start(world, host="127.0.0.2", token="s3cret")
    try:
        assert server.session.url.endswith("/?token=s3cret")
        assert _request(server, "GET", "/api/info", token=False)[0] == 401
        assert _request(server, "GET", "/api/info?token=wrong", token=False)[0] == 401
        status, info = _request(server, "GET", "/api/info?token=s3cret", token=False)
        assert status == 200 and info["organs"][5] == {"id": 6, "name": "liver", "colour": "#911eb4"}
        assert _request(server, "GET", "/api/cases", headers={"X-Ragsam-Token": "s3cret"}, token=False)[0] == 200
        assert _request(server, "GET", "/", headers={"X-Ragsam-Token": "s3cret", "Host": "evil.example:80"},
                        token=False)[0] == 403
    finally:
        server.stop()


def test_loopback_needs_the_token_too_and_refuses_other_hosts_and_bare_posts(local, world, tmp_path):
    from ragsam.app import AppOptions, create_app

    assert len(create_app(AppOptions(data=world["data"], host="0.0.0.0", port=1, state=tmp_path)).token) >= 32
    assert len(local.session.token) >= 32 and local.session.url.endswith(f"/?token={local.session.token}")
    assert _request(local, "GET", "/api/info", token=False)[0] == 401
    assert _request(local, "GET", "/files/data/dataset.json", token=False)[0] == 401
    assert _request(local, "GET", "/api/info")[0] == 200
    assert _request(local, "GET", "/api/info", headers={"Host": "rebind.example:80"})[0] == 403
    conn = http.client.HTTPConnection(local.session.host, local.session.port, timeout=30)
    conn.request("POST", "/api/scans?name=x.nii.gz", body=b"x",  # no X-Ragsam header: a cross-site form
                 headers={"X-Ragsam-Token": local.session.token})
    assert conn.getresponse().status == 403


def test_no_token_only_on_loopback_when_asked(world, tmp_path):
    from ragsam.app import AppOptions, create_app

    session = create_app(AppOptions(data=world["data"], port=1, state=tmp_path, token=False))
    assert session.token is None and session.url == "http://127.0.0.1:1/"
    with pytest.raises(InputError, match="--no-token is refused on 0.0.0.0"):
        create_app(AppOptions(data=world["data"], host="0.0.0.0", port=1, state=tmp_path, token=False))


def test_the_token_url_sets_a_cookie_and_leaves_the_address_bar(local):
    token = local.session.token
    status, _, response = _request(local, "GET", f"/?token={token}", token=False, full=True)
    assert status == 303 and response.getheader("location") == "/"
    cookie = response.getheader("set-cookie")
    assert cookie.startswith(f"ragsam_token_{local.session.port}={token};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    status, page = _request(local, "GET", "/", headers={"Cookie": f"ragsam_token_{local.session.port}={token}"},
                            token=False)
    assert status == 200 and b"<title>ragsam" in page


@pytest.mark.parametrize("path, token, status", [("/", True, 200), ("/static/app.js", True, 200),
                                                 ("/api/info", False, 401), ("/files/data/nothing.nii.gz", True, 404),
                                                 ("/api/scans/nope", True, 404)])
def test_every_response_forbids_framing_sniffing_and_inline_script(local, path, token, status):
    got, _, response = _request(local, "GET", path, token=token, full=True)
    assert got == status
    csp = dict(part.strip().split(" ", 1) for part in response.getheader("content-security-policy").split(";"))
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'" and csp["default-src"] == "'none'"
    assert csp["frame-ancestors"] == "'none'" and "unsafe" not in response.getheader("content-security-policy")
    assert response.getheader("x-frame-options") == "DENY"
    assert response.getheader("x-content-type-options") == "nosniff"
    assert response.getheader("referrer-policy") == "no-referrer"
    if not path.startswith("/static/"):
        assert response.getheader("cache-control") == "no-store"


def test_the_page_has_no_inline_script_or_style():
    from html.parser import HTMLParser

    from ragsam.app.server import STATIC

    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            names = {k for k, _ in attrs}
            if tag == "script" and "src" not in names or tag == "style" or "style" in names \
                    or any(k.startswith("on") for k in names):
                found.append((tag, attrs))

    Parser().feed((STATIC / "index.html").read_text())
    assert found == []
    script = (STATIC / "app.js").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "outerHTML" not in script


@pytest.mark.parametrize("path", ["/files/data/..%2F..%2F..%2Fetc%2Fpasswd", "/files/data/%2Fetc%2Fpasswd",
                                  "/files/nowhere/x.nii.gz", "/files/scans/..%2F..%2Fbank%2Fbank.json",
                                  "/files/scans/.1234abcd.tmp/input/scan.nii.gz"])
def test_no_path_leaves_the_given_folders(local, path):
    status, body = _request(local, "GET", path)
    assert status == 403 and any(w in body["error"] for w in ("escapes", "absolute", "unknown", "being checked"))
    assert "pytest-of-" not in body["error"]  # server folders are named <data>, <scans>, never by their path


def test_files_and_cases_are_served(local, world):
    status, cases = _request(local, "GET", "/api/cases")
    assert status == 200 and [c["id"] for c in cases] == world["cases"]
    first = cases[0]
    assert first["predictions"] == {"rag": ["predictions0", f"rag/{first['id']}.nii.gz"]}
    status, data = _request(local, "GET", "/files/" + "/".join(first["image"]))
    assert status == 200 and data == Path(world["first_image"]).read_bytes()
    status, rows = _request(local, "GET", f"/api/metrics?case={first['id']}&method=rag")
    dice = {r["id"]: r["dice"] for r in rows}
    assert dice[6] == 0.0 and all(v == 1.0 for k, v in dice.items() if k != 6)


def test_uploads_are_validated_and_limited(local, world, tmp_path):
    from ragsam.data.volume import read_image

    scans = world["root"] / "work-127.0.0.1" / "scans"
    status, body = _request(local, "POST", "/api/scans?name=big.nii.gz&mode=rag", body=b"0" * (2 << 20))
    assert status == 413 and body["error"] == "big.nii.gz: upload larger than the limit of 1 MiB"
    bad = tmp_path / "half.nii.gz"
    bad.write_bytes(Path(world["first_image"]).read_bytes()[:3000])
    with pytest.raises(InputError) as refused:
        read_image(bad)
    status, body = _request(local, "POST", "/api/scans?name=half.nii.gz&mode=rag", body=bad.read_bytes())
    assert status == 400 and body["error"] == f"half.nii.gz: {refused.value.problem}"
    status, body = _request(local, "POST", "/api/scans?name=notes.txt&mode=rag", body=b"hello")
    assert status == 400 and body["error"] == "notes.txt: not a NIfTI file (.nii, .nii.gz) or a zip of a DICOM series"
    status, body = _request(local, "POST", "/api/scans?name=a.zip&mode=rag", body=_zip({"../../evil.dcm": b"x"}))
    assert status == 400 and "escapes" in body["error"]
    status, body = _request(local, "POST", "/api/scans?name=ct.nii.gz&mode=finetuned",
                            body=Path(world["first_image"]).read_bytes())
    assert status == 400 and "needs a fine-tuned run (start the app with --run)" in body["error"]
    assert not any(scans.iterdir())  # nothing written by any refused upload
    assert not (scans.parent.parent / "evil.dcm").exists()


def _zip(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_missing_folders_are_refused_at_start(tmp_path):
    from ragsam.app import AppOptions, create_app

    with pytest.raises(InputError, match="--data folder does not exist"):
        create_app(AppOptions(data=tmp_path / "nope", port=1))
    with pytest.raises(InputError, match="give at least one of --bank, --run, --data"):
        create_app(AppOptions(port=1))

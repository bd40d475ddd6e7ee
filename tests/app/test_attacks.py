"""Every hostile upload we know of, against a real server process: expected status, one line naming the
upload (never a server path), nothing written outside the scans folder, memory bounded.

One parametrised test over :data:`ATTACKS` (in the spirit of tests/cli/test_malformed_inputs.py), run
against one ``ragsam app`` served from a child process (:class:`ServerProcess`, the default 1 GiB
upload limit) so that its peak RSS (``VmHWM``) is the server's own. The last tests send four bombs at
once and a 1 GiB body, then check the server's peak stayed under :data:`PEAK_LIMIT`. Each attack's time
and the server's memory are printed (``pytest -s``) for docs/benchmarks.md; times are not asserted.

Add an attack for every new defect found: append ``Attack(...)`` below.
"""

from __future__ import annotations

import http.client
import json
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from app_fixtures import ServerProcess
from hostile import encrypted, nifti_bomb, nifti_header, plain_gzip, small_ct, zip_bomb, zip_files, zip_raw

PEAK_LIMIT = 1.5e9  # bytes: the server's peak RSS for any upload up to the body limit, alone or four at once
GiB, MiB = 1 << 30, 1 << 20
FIGURES: dict[str, dict] = {}
ACCEPTED: list[str] = []


@dataclass
class Attack:
    """One hostile request: upload name, body (bytes, or chunks sent without a length), expected answer."""

    id: str
    name: str
    body: Callable[[], bytes | Iterable[bytes]]
    status: int
    says: str          # part of the one-line error (or, for 201, the name the server must echo)
    shown: str = ""    # how the message starts (default: ``"<name>: "``)


def _many_small() -> bytes:
    """1100 entries of 1 MiB of zeros: each under the ratio floor, 1.1 GiB together."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(bytes(MiB)) + compressor.flush()
    crc = zlib.crc32(bytes(MiB))
    return zip_raw([(f"s{i:04d}.dcm", data, crc, MiB, stat.S_IFREG | 0o644) for i in range(1100)])


def _chunks(total: int, chunk: int = 4 * MiB) -> Iterable[bytes]:
    block = bytes(chunk)
    for _ in range(total // chunk):
        yield block


LINK = stat.S_IFLNK | 0o777
ATTACKS = [
    Attack("script-in-name", "<img src=x onerror=alert(1)>.nii.gz", small_ct, 201,
           "<img src=x onerror=alert(1)>.nii.gz"),
    Attack("path-in-name", "../../../x.nii.gz", lambda: b"not a nifti", 400, "not a readable image", "x.nii.gz: "),
    Attack("newline-in-name", "a\nb.nii.gz", lambda: b"x", 400, "holds control characters", "upload name "),
    Attack("bidi-override-in-name", "scan\u202egz.exe.nii.gz", lambda: b"x", 400, "'scan\\u202egz.exe.nii.gz' holds",
           "upload name "),
    Attack("long-name", "n" * 300 + ".nii.gz", lambda: b"x", 400, "characters long", "upload name "),
    Attack("not-a-scan-name", "notes.txt", lambda: b"x", 400, "not a NIfTI file"),
    Attack("zip-slip", "slip.zip", lambda: zip_files({"../../evil.dcm": b"x"}), 400, "escapes the upload"),
    Attack("zip-absolute", "abs.zip", lambda: zip_files({"/tmp/ragsam-evil.dcm": b"x"}), 400, "escapes the upload"),
    Attack("zip-symlink", "link.zip", lambda: zip_files({"evil": b"/etc/passwd"}, {"evil": LINK}), 400,
           "is a symbolic link"),
    Attack("zip-symlink-with-child", "linkchild.zip",
           lambda: zip_files({"d": b"/tmp", "d/evil.dcm": b"x"}, {"d": LINK}), 400, "is a symbolic link"),
    Attack("zip-file-and-folder", "clash.zip", lambda: zip_files({"a": b"x", "a/b": b"y"}), 400,
           "'a' is both a file and a folder"),
    Attack("zip-duplicate", "dup.zip", lambda: zip_raw([("a.dcm", b"\x03\x00", 0, 0, stat.S_IFREG | 0o644)] * 2),
           400, "appears twice"),
    Attack("zip-bomb-1GiB", "bomb.zip", lambda: zip_bomb("x.dcm", GiB), 400, "per entry"),
    Attack("zip-bomb-4GiB", "bomb4.zip", lambda: zip_bomb("x.dcm", 4 * GiB - 16 * MiB), 400, "per entry"),
    Attack("zip-bomb-ratio", "ratio.zip", lambda: zip_bomb("x.dcm", 256 * MiB), 400, "(a zip bomb?)"),
    Attack("zip-bomb-many-entries", "small.zip", _many_small, 400, "unzips to more than 1024 MiB"),
    Attack("zip-bomb-lying-size", "lie.zip", lambda: zip_bomb("x.dcm", 256 * MiB, declared=MiB), 400,
           "not a readable zip file (Bad CRC-32"),
    Attack("zip-30000-entries", "many.zip",
           lambda: zip_raw([(f"{i}", b"\x03\x00", 0, 0, stat.S_IFREG | 0o644) for i in range(30000)]), 400,
           "the limit is 20000 entries"),
    Attack("zip-encrypted", "enc.zip", lambda: encrypted(zip_files({"a.dcm": b"x"})), 400, "not a readable zip file"),
    Attack("zip-garbage", "junk.zip", lambda: b"this is not a zip file", 400, "not a readable zip file"),
    Attack("zip-empty", "empty.zip", lambda: zip_files({}), 400, "the zip file is empty"),
    Attack("nifti-header-26GB", "huge.nii.gz", lambda: nifti_bomb((2048, 2048, 3200), 0), 400,
           "refusing more than"),
    Attack("nifti-header-over-budget", "big.nii.gz", lambda: nifti_bomb((1024, 1024, 768), 16 * MiB), 400,
           "the app reads at most"),
    Attack("nifti-float64-over-budget", "f64.nii.gz", lambda: nifti_bomb((512, 512, 300), 0, 64, 64), 400,
           "voxels of 8 byte(s)"),
    Attack("nifti-gzip-bomb-behind-small-header", "trail.nii.gz",
           lambda: nifti_bomb((512, 512, 365), 4 * GiB - 16 * MiB), 400, "do not look like CT"),
    Attack("nifti-not-gzip", "plain.nii.gz", lambda: nifti_header((4, 4, 4)) + bytes(128), 400,
           "not a readable image"),
    Attack("nifti-truncated", "cut.nii.gz", lambda: plain_gzip(nifti_header((64, 64, 64))), 400, "truncated"),
    Attack("body-over-limit-no-length", "long.nii.gz", lambda: _chunks(GiB + 4 * MiB), 413,
           "upload larger than the limit of 1024 MiB"),
]


@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    running = ServerProcess(bank=world["bank"], data=world["data"], predictions=[str(world["predictions"])],
                            state=root / "work", sam2_weights="tiny", k=2)
    running.root = root
    FIGURES["start"] = running.memory()
    yield running
    running.stop()


def _post(server, name: str, body, token: bool = True) -> tuple[int, dict, float]:
    """``(status, JSON, seconds)`` of one upload; a body that is not bytes is sent chunked, without a length."""
    from urllib.parse import quote

    conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
    headers = {"X-Ragsam": "1", **({"X-Ragsam-Token": server.token} if token else {})}
    start = time.perf_counter()
    try:
        if isinstance(body, bytes):
            conn.request("POST", f"/api/scans?name={quote(name)}&mode=rag", body=body, headers=headers)
        else:
            conn.request("POST", f"/api/scans?name={quote(name)}&mode=rag", body=body, encode_chunked=True,
                         headers={**headers, "Transfer-Encoding": "chunked"})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered before the whole body was sent
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data, time.perf_counter() - start


def _tree(root: Path, scans: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if scans not in p.parents and p != scans}


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack(server, world, attack):
    scans = server.root / "work" / "scans"
    before_outside = _tree(server.root, scans) | _tree(Path(world["root"]), scans)
    before = set(p.name for p in scans.iterdir())
    status, body, seconds = _post(server, attack.name, attack.body())
    FIGURES[attack.id] = {"status": status, "seconds": round(seconds, 2), **server.memory()}
    assert status == attack.status, body
    after = set(p.name for p in scans.iterdir())
    if status == 201:
        assert body["name"] == attack.says and after - before == {body["id"]}
        ACCEPTED.append(body["id"])
    else:
        line = body["error"]
        assert line.startswith(attack.shown or f"{attack.name}: ") and attack.says in line, line
        assert "\n" not in line and str(server.root) not in line and str(world["root"]) not in line
        assert "pytest-of-" not in line and "/work/" not in line and "site-packages" not in line
        assert after == before  # nothing kept, no staging folder left
    assert _tree(server.root, scans) | _tree(Path(world["root"]), scans) == before_outside
    assert not Path("/tmp/ragsam-evil.dcm").exists()
    assert not list(server.root.rglob("evil*")) and not list(Path(world["root"]).rglob("evil*"))


def test_a_zip_of_a_real_dicom_series_is_accepted_and_priced_from_its_headers(server, ct_dicom, monkeypatch,
                                                                             tmp_path):
    from ragsam.app import uploads
    from ragsam.errors import InputError

    files = sorted(Path(ct_dicom["image"]).iterdir())
    page = b"<script src='evil.js'></script>"
    members = {f"study/series/{f.name}": f.read_bytes() for f in files} | {"study/series/evil.html": page}
    status, body, _ = _post(server, "series.zip", zip_files(members))
    assert status == 201 and body["name"] == "series.zip"
    assert body["image"] == ["scans", f"{body['id']}/input/dicom/study/series"]
    stored = server.root / "work" / "scans" / body["id"] / "input" / "dicom" / "study" / "series"
    assert sorted(p.name for p in stored.iterdir()) == sorted([f.name for f in files] + ["evil.html"])
    # a file of an upload is served as bytes in a sandbox, never as a page of the app's origin
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("GET", f"/files/scans/{body['id']}/input/dicom/study/series/evil.html",
                 headers={"X-Ragsam-Token": server.token})
    response = conn.getresponse()
    assert response.read() == page and response.getheader("content-type") == "application/octet-stream"
    assert response.getheader("content-security-policy") == "default-src 'none'; sandbox; frame-ancestors 'none'"
    assert response.getheader("x-content-type-options") == "nosniff"
    conn.close()
    # the same series priced against a smaller budget: refused from the first file's header x file count
    voxels = 512 * 512 * len(files)
    monkeypatch.setattr(uploads, "READ_BUDGET", 7 * voxels - 1)
    with pytest.raises(InputError, match=f"the scan holds {voxels:,} voxels of 2 byte"):
        uploads.check_scan_size(Path(ct_dicom["image"]))
    monkeypatch.setattr(uploads, "READ_BUDGET", 7 * voxels)
    uploads.check_scan_size(Path(ct_dicom["image"]))


def test_a_correction_bomb_is_refused_before_it_is_read(server):
    scan_id = ACCEPTED[0]
    deadline = time.monotonic() + 300
    while True:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        conn.request("GET", f"/api/scans/{scan_id}", headers={"X-Ragsam-Token": server.token})
        scan = json.loads(conn.getresponse().read())
        conn.close()
        if scan["state"] in ("done", "error") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert scan["state"] == "done", scan
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("PUT", f"/api/scans/{scan_id}/labels", body=nifti_bomb((1024, 1024, 768), 16 * MiB),
                 headers={"X-Ragsam": "1", "X-Ragsam-Token": server.token})
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 400 and body["error"].startswith("correction: the scan holds 805,306,368 voxels")
    folder = server.root / "work" / "scans" / scan_id
    assert sorted(p.name for p in folder.iterdir()) == ["input", "labels.nii.gz", "scan.json"]  # no correction file left


def test_four_bombs_at_once_stay_bounded(server):
    bombs = [("trail.nii.gz", nifti_bomb((512, 512, 365), GiB)) for _ in range(2)]
    bombs += [("small.zip", _many_small()), ("bomb.zip", zip_bomb("x.dcm", GiB))]
    results: list = [None] * len(bombs)

    def send(i: int) -> None:
        results[i] = _post(server, *bombs[i])

    start = time.perf_counter()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bombs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    FIGURES["four-at-once"] = {"seconds": round(time.perf_counter() - start, 2), **server.memory()}
    assert [r[0] for r in results] == [400] * 4, results
    assert [r[1]["error"].split(":")[0] for r in results] == [name for name, _ in bombs]


def test_a_fifth_body_at_once_is_turned_away(server):
    from ragsam.app.uploads import MAX_RECEIVING

    slow = []
    for _ in range(MAX_RECEIVING):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        conn.putrequest("POST", "/api/scans?name=slow.nii.gz&mode=rag")
        for key, value in {"X-Ragsam": "1", "X-Ragsam-Token": server.token, "Content-Length": str(MiB)}.items():
            conn.putheader(key, value)
        conn.endheaders(b"\x1f")
        slow.append(conn)
    time.sleep(1.0)
    status, body, _ = _post(server, "fifth.nii.gz", b"x")
    for conn in slow:
        conn.close()
    assert status == 503 and body["error"] == f"fifth.nii.gz: {MAX_RECEIVING} uploads are already arriving; " \
                                              "try again when one is done"
    scans = server.root / "work" / "scans"
    deadline = time.monotonic() + 10
    while any(p.name.endswith(".tmp") for p in scans.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the server removes what the dropped bodies left once it notices them gone
    assert not any(p.name.endswith(".tmp") for p in scans.iterdir())


def test_the_server_peak_memory_stayed_bounded(server):
    peak = server.memory()["peak"]
    print("\napp attack figures (status, seconds, server RSS and peak RSS in MB):")
    for key, row in FIGURES.items():
        print(f"  {key:40s} {row.get('status', ''):>4} {row.get('seconds', ''):>6} "
              f"{row['rss'] / 1e6:8.0f} {row['peak'] / 1e6:8.0f}")
    assert peak < PEAK_LIMIT, f"server peak RSS {peak / 1e9:.2f} GB"

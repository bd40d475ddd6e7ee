"""The app in a real browser: Debian's Chromium (headless) driven by Playwright, on a 64 px phantom.

One server and one browser for the module; the steps run in order (view -> bad upload ->
segment -> correct -> add to bank -> retrieve it -> re-segment -> hostile names) and save a
screenshot each under docs/app/. The page is opened with the token URL the command line
prints, and every step checks that the page broke no Content-Security-Policy rule and raised
no error. If Chromium cannot start, the tests fail (never skip): the app's promise is that it
works in a browser.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from app_fixtures import RunningServer, free_port
from PIL import Image

CHROMIUM = os.environ.get("RAGSAM_CHROMIUM", "/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "app"
LIVER = (0x91, 0x1E, 0xB4)  # label 6 in the reports' palette
#: A prediction method (a folder name) that is HTML; it sorts after "rag", which test 1 opens.
HOSTILE_METHOD = 'z<img src=x onerror="window.__pwned=\'method\'">'
HOSTILE_SCANS = ['<img src=x onerror="window.__pwned=\'scan\'">.nii.gz',
                 '"><svg onload="window.__pwned=\'svg\'"><b>bold.nii.gz']

@pytest.fixture(scope="module")
def server(world, tmp_path_factory):
    from ragsam.app import AppOptions, create_app

    predictions = tmp_path_factory.mktemp("browser-predictions")
    shutil.copytree(world["predictions"] / "rag", predictions / "rag")
    (predictions / HOSTILE_METHOD).mkdir()
    first = sorted((predictions / "rag").iterdir())[0]
    shutil.copy(first, predictions / HOSTILE_METHOD / first.name)
    session = create_app(AppOptions(bank=world["bank"], data=world["data"], predictions=(predictions,),
                                    port=free_port(), state=world["root"] / "work", sam2_weights="tiny", k=2))
    running = RunningServer(session)
    yield running
    running.stop()


@contextlib.contextmanager
def app_tab(server):
    """A headless Chromium tab on the app, logged in by its token URL: ``(tab, errors)``, where ``errors``
    collects page errors and Content-Security-Policy violations."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (apt-get install chromium); "
                    "the browser tests need it and do not skip")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        tab = browser.new_page(viewport={"width": 1400, "height": 800})
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
        tab.goto(f"{server.base}/?token={server.session.token}")
        tab.wait_for_selector("body[data-ready='1']", timeout=60_000)
        try:
            yield tab, errors
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(server):
    with app_tab(server) as (tab, errors):
        assert tab.url == server.base + "/"  # the token went into a cookie, out of the address bar and history
        tab.errors = errors
        yield tab


def _shot(page, name: str) -> Path:
    DOCS.mkdir(parents=True, exist_ok=True)
    path = DOCS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def _canvas_pixels(page, selector: str) -> np.ndarray:
    """RGB ``(H, W, 3)`` of an element, in CSS pixels (device scale 1)."""
    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB"))


def _voxel_labels(page, viewer: str, points: list[tuple[int, int]], labels_path: Path) -> list[int]:
    """Ground-truth label under each canvas pixel, through NiiVue's own canvas -> mm mapping."""
    mms = page.evaluate(
        """([viewer, points]) => { const nv = window.ragsam.state[viewer];
             const dpr = window.devicePixelRatio || 1;
             return points.map(([x, y]) => Array.from(nv.frac2mm(nv.canvasPos2frac([x * dpr, y * dpr])))); }""",
        [viewer, points])
    image = sitk.ReadImage(str(labels_path))
    array = sitk.GetArrayFromImage(image)
    out = []
    for mm in mms:
        x, y, z = image.TransformPhysicalPointToIndex((-mm[0], -mm[1], mm[2]))  # NiiVue RAS -> ITK LPS
        out.append(int(array[z, y, x]))
    return out


def test_1_case_overlays_are_coloured_where_the_organ_is(page, world):
    first = world["cases"][0]
    page.click(f"#cases li[data-id='{first}']")
    page.wait_for_function(f"() => document.body.dataset.loaded === 'case:{first}:rag'", timeout=60_000)
    page.fill("#opacity", "1")
    page.dispatch_event("#opacity", "input")
    page.wait_for_timeout(500)
    gt_view = _canvas_pixels(page, "#gl2")
    pred_view = _canvas_pixels(page, "#gl1")
    liver = np.all(gt_view == LIVER, axis=-1)
    assert liver.sum() > 200  # the phantom liver is large on the middle slice
    assert np.all(pred_view == LIVER, axis=-1).sum() == 0  # the "rag" prediction has no liver
    ys, xs = np.nonzero(liver)
    pick = np.linspace(0, len(ys) - 1, 40).astype(int)
    found = _voxel_labels(page, "nvB", [(int(xs[i]), int(ys[i])) for i in pick], world["first_labels"])
    assert sum(v == 6 for v in found) >= 38, found  # boundary pixels may fall one voxel off
    # the Dice table: every organ but the liver is copied from the ground truth
    rows = {r.get_attribute("data-organ"): r.inner_text().split("\t") for r in page.locator("#metrics tbody tr").all()}
    assert rows["6"][1].strip() == "0.000" and rows["1"][1].strip() == "1.000" and rows["1"][2].strip() == "0.0"
    _shot(page, "1-case")
    assert not page.errors


def test_2_a_bad_upload_gets_the_command_line_message(page, world, tmp_path):
    from ragsam.data.volume import read_image
    from ragsam.errors import InputError

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(InputError) as refused:
        read_image(bad)
    page.set_input_files("#file", str(bad))
    page.click("#segment")
    page.wait_for_function("() => document.querySelector('#message').textContent.length > 0", timeout=30_000)
    assert page.inner_text("#message") == f"ragsam: error: broken.nii.gz: {refused.value.problem}"
    assert not any((world["root"] / "work" / "scans").iterdir())  # nothing written


def test_3_upload_segment_correct_add_and_resegment(page, server, world, tmp_path):
    from ragsam.retrieval.bank_edit import list_additions

    page.fill("#opacity", "0.35")  # the tiny random SAM 2 labels every pixel: keep the CT visible
    page.dispatch_event("#opacity", "input")
    scan_file = tmp_path / "new-scan.nii.gz"
    shutil.copy(world["first_image"], scan_file)  # case 1 is not in the bank
    page.set_input_files("#file", str(scan_file))
    page.click("#segment")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('slice')", timeout=120_000)
    page.wait_for_function("() => (document.body.dataset.loaded || '').startsWith('scan:') && "
                           "document.body.dataset.loaded.endsWith(':1')", timeout=300_000)
    scan = page.evaluate("window.ragsam.state.current.scan")
    assert scan["state"] == "done" and scan["total"] == 12 and scan["done"] == 12
    labels_path = world["root"] / "work" / "scans" / scan["id"] / "labels.nii.gz"
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))
    assert first.shape == (12, 64, 64)  # on the input's grid
    download = page.request.get(server.base + page.get_attribute("#download", "href"))
    assert download.ok and download.body() == labels_path.read_bytes()
    assert page.is_hidden("#download-seg")  # a NIfTI upload has no source series for a SEG
    _shot(page, "2-segmented")

    # paint liver on the axial slice on screen
    page.select_option("#organ", "6")
    page.click("#tool-brush")
    page.fill("#pen", "6")
    page.dispatch_event("#pen", "input")
    box = page.locator("#gl1").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy - 40)
    page.mouse.down()
    for step in range(13):
        page.mouse.move(cx - 60 + 10 * step, cy - 40 + (step % 2) * 20, steps=2)
    page.mouse.up()
    page.click("#tool-off")
    _shot(page, "3-corrected")
    page.click("#add")
    page.wait_for_function("() => /^(added slices|ragsam: error)/.test(document.querySelector('#message').textContent)",
                           timeout=120_000)
    assert page.inner_text("#message").startswith("added slices"), page.inner_text("#message")
    [addition] = list_additions(world["bank"])
    corrected = page.evaluate("window.ragsam.state.current.scan.corrected")
    assert addition.source_slices == corrected and len(corrected) == 1
    z = corrected[0]
    edited = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))
    assert (edited == 6).sum() > (first == 6).sum()

    # a later query retrieves it: the supports of the slice on screen now include the added slice
    page.evaluate("window.ragsam.showSupports()")  # as a move of the crosshair does
    page.wait_for_selector(f"#supports .support[data-case='{addition.id}']", timeout=60_000)
    support = page.locator(f"#supports .support[data-case='{addition.id}']")
    assert int(page.get_attribute("#supports", "data-z")) == z
    assert float(support.get_attribute("data-similarity")) == pytest.approx(1.0, abs=1e-3)
    _shot(page, "4-added-and-retrieved")

    # re-segment: the corrected slice becomes a support of its own scan; its neighbours change
    page.click("#resegment")
    page.wait_for_function("() => document.body.dataset.loaded && document.body.dataset.loaded.endsWith(':2')",
                           timeout=300_000)
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))
    neighbours = [n for n in (z - 1, z + 1) if 0 <= n < 12]
    grid = _canonical(scan_file)
    assert any(not np.array_equal(grid(edited)[n], grid(again)[n]) for n in neighbours)
    page.evaluate("window.ragsam.state.nvA.moveCrosshairInVox(0, 0, 1)")  # show a neighbour of the fix
    page.wait_for_timeout(300)
    _shot(page, "5-resegmented")
    assert not page.errors


def _canonical(image_path: Path):
    from ragsam.data.slices import SliceSettings, to_canonical, volume_to_slices
    from ragsam.data.volume import read_image

    grid = volume_to_slices(read_image(image_path), None, SliceSettings(size=64)).grid
    return lambda array: to_canonical(array, grid.axes, grid.flips)


def test_4_names_from_files_are_shown_as_text_never_run(page, server, world):
    from hostile import small_ct

    ct = small_ct()
    for name in HOSTILE_SCANS:
        count = page.locator("#scans li").count()
        page.set_input_files("#file", files=[{"name": name, "mimeType": "application/gzip", "buffer": ct}])
        page.click("#segment")
        page.wait_for_function(f"() => document.querySelectorAll('#scans li').length === {count + 1}", timeout=60_000)
    page.reload()  # the lists rebuilt from the server's JSON, as a colleague opening the page would see them
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    first = world["cases"][0]
    page.click(f"#cases li[data-id='{first}']")
    page.wait_for_function(f"() => document.body.dataset.loaded === 'case:{first}:rag'", timeout=60_000)
    page.select_option("#method", HOSTILE_METHOD)
    page.wait_for_function("() => document.body.dataset.loaded.startsWith('case:' + "
                           f"{json.dumps(first)} + ':z<img')", timeout=60_000)
    scans = page.eval_on_selector_all("#scans li", "els => els.map((e) => e.textContent)")
    for name in HOSTILE_SCANS:
        assert any(text.startswith(f"{name} · rag · ") for text in scans), scans
    assert page.inner_text(f"#cases li[data-id='{first}']") == f"{first} · GT · rag, {HOSTILE_METHOD}"
    assert page.inner_text("#titleA") == f"{first} · prediction: {HOSTILE_METHOD}"
    assert HOSTILE_METHOD in page.eval_on_selector_all("#method option", "els => els.map((e) => e.textContent)")
    assert page.locator("#metrics tbody tr").count() > 0
    # nothing from those names became an element, an attribute or a script
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], svg, b, [onerror], [onload]').length") == 0
    assert page.evaluate("document.querySelectorAll('#scans li *, #cases li *, #method option *').length") == 0
    assert page.evaluate("document.querySelectorAll('script').length") == 2  # niivue.umd.js and app.js
    assert page.evaluate("window.__pwned === undefined")
    _shot(page, "6-hostile-names")
    assert not page.errors

// ragsam app page: two synchronised NiiVue viewers, the case and scan lists, editing, supports.
// Every value that comes from data (scan and case names, methods, organs, bank entries) reaches the
// page through el() / textContent, never as HTML; the server's Content-Security-Policy forbids inline script.
"use strict";

const $ = (sel) => document.querySelector(sel);

// An element with properties (dataset: {...}, style: {...}, any other DOM property) and text or element children.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset" || key === "style") Object.assign(node[key], value);
    else node[key] = value;
  }
  node.append(...children.map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

function byData(selector, key, value) {
  return Array.from(document.querySelectorAll(selector)).find((node) => node.dataset[key] === String(value)) || null;
}
const state = { info: null, cases: [], current: null, poll: null, supportTimer: null, viewsReady: null };

async function api(path, options = {}) {
  const headers = Object.assign({ "X-Ragsam": "1" }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function fileUrl(ref) {
  return `/files/${encodeURIComponent(ref[0])}/${ref[1].split("/").map(encodeURIComponent).join("/")}`;
}

function say(text, ok = false) {
  const box = $("#message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
}

function fail(error) {
  say(`ragsam: error: ${error.message || error}`);
}

function labelColormap() {
  const top = Math.max(1, ...state.info.organs.map((o) => o.id));
  const cmap = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
  for (let id = 1; id <= top; id++) {
    const organ = state.info.organs.find((o) => o.id === id);
    const hex = organ ? organ.colour : "#ffffff";
    cmap.R.push(parseInt(hex.slice(1, 3), 16));
    cmap.G.push(parseInt(hex.slice(3, 5), 16));
    cmap.B.push(parseInt(hex.slice(5, 7), 16));
    cmap.A.push(255);
    cmap.I.push(id);
    cmap.labels.push(organ ? organ.name : String(id));
  }
  return cmap;
}

function makeViewer(canvasId) {
  const nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false, dragAndDropEnabled: false,
                                 isRadiologicalConvention: true, crosshairColor: [0.2, 0.8, 1, 0.6], crosshairWidth: 1,
                                 isColorbar: false });
  return nv.attachTo(canvasId).then(() => nv);
}

function windowRange() {
  return state.info.windows[$("#window").value];
}

function opacity() {
  return parseFloat($("#opacity").value);
}

async function loadInto(nv, imageRef, labelsRef, asDrawing) {
  const [lo, hi] = windowRange();
  const volumes = [{ url: fileUrl(imageRef), name: imageRef[1].split("/").pop(), colormap: "gray",
                     cal_min: lo, cal_max: hi }];
  if (labelsRef && !asDrawing) {
    volumes.push({ url: fileUrl(labelsRef), name: labelsRef[1].split("/").pop(), opacity: opacity() });
  }
  nv.closeDrawing();
  await nv.loadVolumes(volumes);
  if (nv.volumes.length > 1) {
    nv.volumes[1].setColormapLabel(labelColormap());
    nv.updateGLVolume();
  }
  if (labelsRef && asDrawing) {
    await nv.loadDrawingFromUrl(fileUrl(labelsRef));
    nv.setDrawColormap(labelColormap());
    nv.setDrawOpacity(opacity());
  }
}

function setView(kind) {
  for (const nv of [state.nvA, state.nvB]) {
    const type = { axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal,
                   multi: nv.sliceTypeMultiplanar }[kind];
    nv.setSliceType(type);
  }
  document.querySelectorAll("button.view").forEach((b) => b.classList.toggle("on", b.dataset.view === kind));
}

// ---------------------------------------------------------------- cases
// The two viewers follow each other only while both show a volume: NiiVue cannot place the
// crosshair of an empty viewer (a scan opened before any case would throw on every move).
function linkViewers(linked) {
  const sync = { "2d": linked, "3d": linked };
  state.nvA.broadcastTo(linked ? [state.nvB] : [], sync);
  state.nvB.broadcastTo(linked ? [state.nvA] : [], sync);
}

async function openCase(entry) {
  state.current = { kind: "case", entry };
  linkViewers(true);
  markActive(byData("#cases li", "id", entry.id));
  $("#editbar").hidden = true;
  $("#method-label").hidden = !Object.keys(entry.predictions).length;
  const methods = Object.keys(entry.predictions);
  $("#method").replaceChildren(...methods.map((m) => el("option", { value: m }, m)));
  await showCase();
}

async function showCase() {
  const entry = state.current.entry;
  const method = $("#method").value;
  const pred = method ? entry.predictions[method] : null;
  $("#viewerB").hidden = !(entry.labels && pred);
  $("#titleA").textContent = pred ? `${entry.id} · prediction: ${method}` : `${entry.id} · ground truth`;
  $("#titleB").textContent = `${entry.id} · ground truth`;
  await loadInto(state.nvA, entry.image, pred || entry.labels, false);
  if (entry.labels && pred) await loadInto(state.nvB, entry.image, entry.labels, false);
  state.nvA.resizeListener();
  state.nvB.resizeListener();
  await showMetrics(entry, method);
  scheduleSupports(0);
  document.body.dataset.loaded = `case:${entry.id}:${method}`;
}

async function showMetrics(entry, method) {
  const body = $("#metrics tbody");
  body.replaceChildren();
  if (!entry || !entry.labels || !method) return;
  const rows = await api(`/api/metrics?case=${encodeURIComponent(entry.id)}&method=${encodeURIComponent(method)}`);
  const fmt = (v, digits) => (v === null ? "–" : v.toFixed(digits));
  body.replaceChildren(...rows.map((r) => el("tr", { dataset: { organ: r.id } }, el("td", {}, r.name),
                                             el("td", {}, fmt(r.dice, 3)), el("td", {}, fmt(r.hd95, 1)))));
}

// ---------------------------------------------------------------- scans
async function upload() {
  const file = $("#file").files[0];
  if (!file) { fail("choose a NIfTI file or a zip of a DICOM series first"); return; }
  say("");
  try {
    const scan = await api(`/api/scans?name=${encodeURIComponent(file.name)}&mode=${encodeURIComponent($("#mode").value)}`,
                           { method: "POST", body: file });
    await refreshScans();
    watch(scan.id);
  } catch (error) { fail(error); }
}

async function refreshScans() {
  const scans = await api("/api/scans");
  $("#scans").replaceChildren(...scans.map((s) => {
    const li = el("li", { dataset: { id: s.id } }, `${s.name} · ${s.mode} · ${s.state}`);
    li.addEventListener("click", () => openScan(s.id).catch(fail));
    return li;
  }));
  if (state.current && state.current.kind === "scan") markActive(byData("#scans li", "id", state.current.scan.id));
}

function watch(id) {
  clearInterval(state.poll);
  state.poll = setInterval(async () => {
    try {
      const scan = await api(`/api/scans/${encodeURIComponent(id)}`);
      $("#progress").max = Math.max(scan.total, 1);
      $("#progress").value = scan.done;
      $("#status").textContent = scan.state === "running" ? `${scan.name}: slice ${scan.done} / ${scan.total}`
                                                          : `${scan.name}: ${scan.state}`;
      if (scan.state === "done" || scan.state === "error") {
        clearInterval(state.poll);
        await refreshScans();
        if (scan.state === "error") fail(scan.error);
        else await openScan(id);
      }
    } catch (error) { clearInterval(state.poll); fail(error); }
  }, 400);
}

async function openScan(id) {
  const scan = await api(`/api/scans/${encodeURIComponent(id)}`);
  if (scan.state !== "done") { watch(id); return; }
  state.current = { kind: "scan", scan };
  linkViewers(false);
  markActive(byData("#scans li", "id", id));
  $("#method-label").hidden = true;
  $("#viewerB").hidden = true;
  $("#editbar").hidden = false;
  $("#titleA").textContent = `${scan.name} · ${scan.mode} (run ${scan.runs}) · edit on the axial view`;
  await loadInto(state.nvA, scan.image, scan.labels, true);
  state.nvA.resizeListener();
  $("#download").href = fileUrl(scan.labels);
  $("#download").download = `${scan.name.replace(/\.(nii\.gz|nii|zip)$/, "")}_labels.nii.gz`;
  // a SEG references its source series: only DICOM scans have one (the server names the file)
  $("#download-seg").href = `/api/scans/${encodeURIComponent(scan.id)}/labels?format=dicom-seg`;
  $("#download-seg").hidden = !scan.dicom;
  showCorrected(scan);
  $("#save-pacs").hidden = !scan.pacs;
  await showMetrics(null, null);
  scheduleSupports(0);
  document.body.dataset.loaded = `scan:${scan.id}:${scan.runs}`;
}

function showCorrected(scan) {
  const added = scan.added.length ? ` · in the bank as ${scan.added.join(", ")}` : "";
  $("#corrected").textContent = `corrected slices: ${scan.corrected.length ? scan.corrected.join(", ") : "none"}${added}`;
}

async function saveCorrection() {
  const scan = state.current.scan;
  const bytes = await state.nvA.saveImage({ filename: "", isSaveDrawing: true });
  const result = await api(`/api/scans/${encodeURIComponent(scan.id)}/labels`, { method: "PUT", body: bytes });
  scan.corrected = result.corrected;
  showCorrected(scan);
  return result;
}

async function addToBank() {
  try {
    await saveCorrection();
    const added = await api(`/api/scans/${encodeURIComponent(state.current.scan.id)}/add`, { method: "POST" });
    state.current.scan.added.push(added.id);
    showCorrected(state.current.scan);
    say(`added slices ${added.slices.join(", ")} to the support bank as ${added.id}`, true);
    scheduleSupports(0);
  } catch (error) { fail(error); }
}

async function resegment() {
  try {
    await saveCorrection();
    await api(`/api/scans/${encodeURIComponent(state.current.scan.id)}/resegment`, { method: "POST" });
    watch(state.current.scan.id);
  } catch (error) { fail(error); }
}

// ---------------------------------------------------------------- PACS (ragsam app --pacs)
async function listStudies() {
  try {
    const studies = await api("/api/pacs/studies");
    $("#studies").replaceChildren(...studies.map((st) => {
      const text = `${st.patient_name || st.patient_id || "?"} · ${st.date} · ${st.description || st.study_uid}` +
                   ` · ${st.modalities.join(",")}`;
      const li = el("li", { dataset: { study: st.study_uid }, title: st.study_uid }, text);
      li.addEventListener("click", () => openStudy(st.study_uid));
      return li;
    }));
  } catch (error) { fail(error); }
}

async function openStudy(studyUid) {
  say("");
  try {
    const scan = await api(`/api/pacs/open?study=${encodeURIComponent(studyUid)}&mode=${encodeURIComponent($("#mode").value)}`,
                           { method: "POST" });
    await refreshScans();
    watch(scan.id);
  } catch (error) { fail(error); }
}

async function saveToPacs() {
  try {
    await saveCorrection();
    const saved = await api(`/api/scans/${encodeURIComponent(state.current.scan.id)}/pacs`, { method: "POST" });
    say(saved.stored ? `stored SEG ${saved.seg} into study ${saved.study}`
                     : `the study already holds this segmentation (SEG ${saved.seg})`, true);
  } catch (error) { fail(error); }
}

function setTool(tool) {
  const nv = state.nvA;
  nv.setDrawingEnabled(tool !== "off");
  if (tool === "brush") nv.setPenValue(parseInt($("#organ").value, 10), false);
  if (tool === "erase") nv.setPenValue(0, false);
  nv.opts.penSize = parseInt($("#pen").value, 10);
  document.querySelectorAll("button.tool").forEach((b) => b.classList.toggle("on", b.id === `tool-${tool}`));
  state.tool = tool;
}

// ---------------------------------------------------------------- supports
function scheduleSupports(delay = 250) {
  clearTimeout(state.supportTimer);
  state.supportTimer = setTimeout(showSupports, delay);
}

async function showSupports() {
  if (!state.info.bank || !state.current || !state.nvA.volumes.length) return;
  const mm = state.nvA.frac2mm(state.nvA.scene.crosshairPos);
  const image = state.current.kind === "case" ? state.current.entry.image : state.current.scan.image;
  const caseId = state.current.kind === "case" ? state.current.entry.id : "";
  const query = `root=${encodeURIComponent(image[0])}&path=${encodeURIComponent(image[1])}&mm=${mm[0]},${mm[1]},${mm[2]}` +
                `&case=${encodeURIComponent(caseId)}`;
  try {
    const result = await api(`/api/supports?${query}`);
    $("#supports-z").textContent = `for slice z=${result.z}`;
    $("#supports").replaceChildren(...result.supports.map((s) => el("div",
      { className: s.case_id.startsWith("added-") ? "support own" : "support",
        dataset: { case: s.case_id, z: s.z, similarity: s.similarity } },
      el("img", { alt: `${s.case_id} z=${s.z}`, src: `/api/thumb/${encodeURIComponent(s.case_id)}/${Number(s.z)}.png` }),
      el("div", {}, `${s.case_id} · z=${s.z}`, el("br"), `cos ${Number(s.similarity).toFixed(3)}`))));
    $("#supports").dataset.z = result.z;
  } catch (error) { fail(error); }
}

// ---------------------------------------------------------------- set-up
function markActive(li) {
  document.querySelectorAll("li.active").forEach((node) => node.classList.remove("active"));
  if (li) li.classList.add("active");
}

async function main() {
  state.info = await api("/api/info");
  const modeNames = { rag: "RAG (bank)", finetuned: "fine-tuned (run)", hybrid: "hybrid" };
  $("#mode").replaceChildren(...state.info.modes.map((m) => el("option", { value: m }, modeNames[m] || m)));
  $("#window").replaceChildren(...Object.keys(state.info.windows).map((w) => el("option", { value: w }, w)));
  $("#organ").replaceChildren(...state.info.organs.map((o) => el("option", { value: o.id }, `${o.id} ${o.name}`)));
  $("#legend").replaceChildren(...state.info.organs.map((o) =>
    el("li", {}, el("span", { className: "swatch", style: { background: o.colour } }), `${o.id} ${o.name}`)));
  state.nvA = await makeViewer("gl1");
  state.nvB = await makeViewer("gl2");
  linkViewers(true);
  state.nvA.onLocationChange = () => scheduleSupports();
  state.nvA.onMouseUp = () => scheduleSupports();
  setView("axial");
  state.cases = await api("/api/cases");
  $("#cases").replaceChildren(...state.cases.map((c) => {
    const methods = Object.keys(c.predictions);
    const li = el("li", { dataset: { id: c.id } },
                  `${c.id}${c.labels ? " · GT" : ""}${methods.length ? " · " + methods.join(", ") : ""}`);
    li.addEventListener("click", () => openCase(c).catch(fail));
    return li;
  }));
  document.querySelectorAll("button.view").forEach((b) => b.addEventListener("click", () => setView(b.dataset.view)));
  $("#method").addEventListener("change", () => showCase().catch(fail));
  $("#window").addEventListener("change", () => {
    const [lo, hi] = windowRange();
    for (const nv of [state.nvA, state.nvB]) {
      if (!nv.volumes.length) continue;
      nv.volumes[0].cal_min = lo;
      nv.volumes[0].cal_max = hi;
      nv.updateGLVolume();
    }
  });
  $("#opacity").addEventListener("input", () => {
    for (const nv of [state.nvA, state.nvB]) {
      if (nv.volumes.length > 1) nv.setOpacity(1, opacity());
      if (nv.drawBitmap) nv.setDrawOpacity(opacity());
    }
  });
  $("#segment").addEventListener("click", upload);
  $("#tool-brush").addEventListener("click", () => setTool("brush"));
  $("#tool-erase").addEventListener("click", () => setTool("erase"));
  $("#tool-off").addEventListener("click", () => setTool("off"));
  $("#organ").addEventListener("change", () => { if (state.tool === "brush") setTool("brush"); });
  $("#pen").addEventListener("input", () => { state.nvA.opts.penSize = parseInt($("#pen").value, 10); });
  $("#undo").addEventListener("click", () => state.nvA.drawUndo());
  $("#save").addEventListener("click", () => saveCorrection().then(() => say("correction saved", true)).catch(fail));
  $("#add").addEventListener("click", addToBank);
  $("#resegment").addEventListener("click", resegment);
  $("#save-pacs").addEventListener("click", saveToPacs);
  $("#pacs-refresh").addEventListener("click", listStudies);
  if (state.info.pacs) { $("#pacs").hidden = false; await listStudies(); }
  await refreshScans();
  window.ragsam = { state, api, showSupports };
  document.body.dataset.ready = "1";
}

main().catch(fail);

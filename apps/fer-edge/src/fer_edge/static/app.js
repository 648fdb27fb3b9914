// fer-edge demo page: uploads a photo (or a webcam frame) to POST predict and draws each face's
// box, label and probabilities; shows the model's metadata. Plain browser JavaScript, no
// libraries, no outside assets. URLs are relative, so the page also works behind a path prefix.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "fer-edge-api-key";
const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d"];
const MAX_CANVAS_SIDE = 1600;

let busy = false;
let liveTimer = null;
let stream = null;

function setStatus(text, state) {
  $("status").textContent = text;
  document.body.dataset.state = state;
}

function headers() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { "X-API-Key": key } : {};
}

async function call(path, options) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options || {}).headers } });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401) {
    $("key-row").hidden = false;
  }
  if (!response.ok) {
    const detail = body && (body.detail || body.error);
    const error = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function fmt(value, digits) {
  return typeof value === "number" && isFinite(value) ? value.toFixed(digits) : "–";
}

function addRow(dl, name, value) {
  if (value === undefined || value === null || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = String(value);
  dl.append(dt, dd);
}

function showMetadata(meta) {
  const prov = meta.provenance || {};
  const cal = meta.calibration || {};
  const abst = meta.abstention || {};
  const name = [meta.model_name || meta.file, meta.model_version].filter(Boolean).join(" ");
  $("model-name").textContent = `${name} · ${meta.precision || "fp32"} · ${meta.provider || "?"}`;
  const dl = $("meta");
  dl.replaceChildren();
  addRow(dl, "data set", meta.dataset || prov.dataset || "not recorded");
  if (prov.sizes) {
    addRow(dl, "images", `${prov.sizes.train} train / ${prov.sizes.val} val / ${prov.sizes.test} test`);
  }
  addRow(dl, "test accuracy", prov.test_accuracy !== undefined ? fmt(prov.test_accuracy, 3) : null);
  addRow(dl, "mean class accuracy", prov.mean_class_accuracy !== undefined ? fmt(prov.mean_class_accuracy, 3) : null);
  if (cal.temperature !== undefined) {
    addRow(dl, "calibration", `temperature ${fmt(cal.temperature, 2)}, ECE ${fmt(cal.ece_before, 3)} → ${fmt(cal.ece_after, 3)}`);
  } else {
    addRow(dl, "calibration", "none (probabilities are normalised scores)");
  }
  if (abst.threshold !== undefined) {
    addRow(dl, "abstains below", `${fmt(abst.threshold, 3)} (coverage target ${fmt(abst.coverage_target, 2)})`);
  }
  addRow(dl, "AU map", meta.au_source);
  addRow(dl, "detector", meta.detector);
  addRow(dl, "labels", (meta.labels || []).join(", "));
  addRow(dl, "input", meta.input_size ? `${meta.input_size} × ${meta.input_size} px` : null);
  addRow(dl, "provider", meta.provider);
  addRow(dl, "file", meta.file);
  const synthetic = prov.synthetic === true || meta.dataset === "synthetic";
  const warning = $("meta-warning");
  if (synthetic) {
    warning.textContent = prov.note || "Trained on synthetic faces: a pipeline check, not a real-face model.";
    warning.hidden = false;
  } else if (!meta.dataset && !prov.dataset) {
    warning.textContent = "This model does not say what it was trained on.";
    warning.hidden = false;
  } else {
    warning.hidden = true;
  }
}

async function loadMetadata() {
  try {
    showMetadata(await call("metadata"));
  } catch (error) {
    $("model-name").textContent = `metadata: ${error.message}`;
  }
}

function probabilities(face) {
  return face.probabilities || face.scores || {};
}

function drawResult(bitmap, result) {
  const canvas = $("canvas");
  const scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(bitmap.width, bitmap.height));
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const sx = canvas.width / result.width;
  const sy = canvas.height / result.height;
  // Sizes in screen pixels: the canvas is scaled to fit the page, its labels should not be.
  const shown = canvas.getBoundingClientRect().width || canvas.width;
  const k = canvas.width / shown;
  const line = Math.max(1, Math.round(2 * k));
  ctx.font = `${Math.round(14 * k)}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  result.faces.forEach((face, i) => {
    const [x, y, w, h] = face.box;
    const colour = COLOURS[i % COLOURS.length];
    ctx.lineWidth = line;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x * sx, y * sy, w * sx, h * sy);
    const text = `${i + 1}. ${face.label} ${fmt(face.score, 2)}`;
    const pad = Math.round(3 * k);
    const height = parseInt(ctx.font, 10) + 2 * pad;
    const width = ctx.measureText(text).width + 2 * pad;
    const top = y * sy >= height ? y * sy - height : y * sy;
    ctx.fillStyle = colour;
    ctx.fillRect(x * sx, top, width, height);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x * sx + pad, top + pad);
  });
  canvas.dataset.faces = String(result.faces.length);
}

function listFaces(result) {
  const list = $("faces");
  list.replaceChildren();
  result.faces.forEach((face) => {
    const item = document.createElement("li");
    item.className = "face";
    item.dataset.label = face.label;
    const label = document.createElement("span");
    label.className = "face-label" + (face.abstained ? " unknown" : "");
    label.textContent = face.abstained
      ? `unknown (most likely ${face.top_label}, ${fmt(face.score, 2)})`
      : `${face.label} ${fmt(face.score, 2)}`;
    const bars = document.createElement("div");
    bars.className = "bars";
    const entries = Object.entries(probabilities(face)).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of entries) {
      const n = document.createElement("span");
      n.textContent = name;
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
      bar.append(fill);
      const v = document.createElement("span");
      v.textContent = fmt(p, 3);
      bars.append(n, bar, v);
    }
    item.append(label, bars);
    list.append(item);
  });
}

async function predict(blob) {
  if (busy) return;
  busy = true;
  setStatus("Asking the model…", "busy");
  try {
    const bitmap = await createImageBitmap(blob);
    const form = new FormData();
    form.append("file", blob, blob.name || "image");
    const mode = $("faces-mode").value;
    const result = await call(`predict?faces=${encodeURIComponent(mode)}`, { method: "POST", body: form });
    drawResult(bitmap, result);
    listFaces(result);
    const n = result.faces.length;
    setStatus(
      n === 0
        ? `No face found (${fmt(result.latency_ms, 1)} ms). Try "the whole image is one face" for a face crop.`
        : `${n} face${n === 1 ? "" : "s"} in ${fmt(result.latency_ms, 1)} ms on ${result.provider}.`,
      "done",
    );
  } catch (error) {
    setStatus(`Could not classify this image: ${error.message}`, "error");
  } finally {
    busy = false;
  }
}

async function startCamera() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("This browser offers no camera here (browsers allow it on localhost or HTTPS only).", "error");
    return;
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "user" }, audio: false });
  } catch (error) {
    setStatus(`The camera is not available: ${error.message}`, "error");
    return;
  }
  $("video").srcObject = stream;
  $("camera").hidden = false;
}

function stopCamera() {
  if (liveTimer) clearInterval(liveTimer);
  liveTimer = null;
  $("camera-live").checked = false;
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = null;
  $("camera").hidden = true;
}

function snap() {
  const video = $("video");
  if (!video.videoWidth) return;
  const frame = document.createElement("canvas");
  frame.width = video.videoWidth;
  frame.height = video.videoHeight;
  frame.getContext("2d").drawImage(video, 0, 0);
  frame.toBlob((blob) => blob && predict(blob), "image/jpeg", 0.9);
}

function setup() {
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) predict(file);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) predict(file);
  });
  $("camera-start").addEventListener("click", startCamera);
  $("camera-stop").addEventListener("click", stopCamera);
  $("camera-snap").addEventListener("click", snap);
  $("camera-live").addEventListener("change", (event) => {
    if (liveTimer) clearInterval(liveTimer);
    liveTimer = event.target.checked ? setInterval(snap, 1000) : null;
  });
  $("key-save").addEventListener("click", () => {
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    $("key-row").hidden = true;
    loadMetadata();
    setStatus("Key saved for this tab. Choose a photo.", "idle");
  });
  document.body.dataset.state = "idle";
  loadMetadata();
}

setup();

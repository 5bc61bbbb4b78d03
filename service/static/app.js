// The search page: text, image or "more like this" query, with filter and min score → POST /v1/search or
// /v1/search/image → results.
// Plain browser JavaScript, no build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("search-form");
const textInput = $("query-text");
const fileInput = $("query-file");
const dropZone = $("drop-zone");
const preview = $("query-preview");
const kInput = $("k");
const keyInput = $("api-key");
const filterInput = $("filter");
const minScoreInput = $("min-score");
let queryImage = null; // the File/Blob of the image query, when one is chosen
let queryItem = null; // the id of the item a "more like this" query started from

// Blob URLs of thumbnails fetched with an API key; revoked when the next results replace them.
let objectUrls = [];

function authHeaders() {
  const key = keyInput.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

// Every API error carries {"detail": "..."}; show it as the server wrote it.
async function errorMessage(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    if (body && body.detail !== undefined) {
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch (_) {
    // not JSON: keep the status text
  }
  return `${response.status}: ${detail}`;
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (_) {
    throw new Error("cannot reach the server — is it still running?");
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

async function loadInfo() {
  try {
    const info = await api("/v1/info");
    const counts = Object.entries(info.indexes)
      .map(([modality, index]) => `${index.count} ${modality}s (${index.kind})`)
      .join(" · ");
    $("info").textContent = `${info.name} · model ${info.model} · ${counts} · runtime ${info.runtime}`;
    kInput.max = info.limits.max_k;
  } catch (err) {
    $("info").textContent = "";
    showError(`server info unavailable: ${err.message}`);
  }
}

function chooseImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image (${file.type})`);
    return;
  }
  queryImage = file;
  queryItem = null;
  textInput.value = ""; // the latest query wins
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("clear-image").hidden = false;
  search();
}

function clearImage() {
  queryImage = null;
  fileInput.value = "";
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  preview.hidden = true;
  $("drop-hint").hidden = false;
  $("clear-image").hidden = true;
}

function selectedTarget() {
  return form.querySelector('input[name="target"]:checked').value;
}

// The options every search route takes: k, and the filter and min score when given (null when invalid).
function searchOptions(target) {
  const k = Number.parseInt(kInput.value, 10);
  if (!Number.isInteger(k) || k < 1) {
    showError("k must be a whole number of at least 1");
    return null;
  }
  const options = { target, k };
  const filter = filterInput.value.trim();
  if (filter) {
    try {
      options.filter = JSON.parse(filter);
    } catch (_) {
      showError('the filter is not valid JSON, e.g. {"split": "test"}');
      return null;
    }
  }
  if (minScoreInput.value.trim() !== "") options.min_score = Number(minScoreInput.value);
  return options;
}

function moreLike(id) {
  queryItem = id;
  if (queryImage) clearImage();
  textInput.value = "";
  search();
}

async function search() {
  showError("");
  const target = selectedTarget();
  const options = searchOptions(target);
  if (!options) return;
  const text = textInput.value.trim();
  let request;
  let what = "";
  if (queryImage) {
    const body = new FormData();
    body.append("file", queryImage, queryImage.name || "query.png");
    for (const [name, value] of Object.entries(options)) {
      body.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    request = api("/v1/search/image", { method: "POST", body });
  } else if (text || queryItem !== null) {
    const query = text ? { text } : { item_id: queryItem };
    what = text ? "" : ` like item #${queryItem}`;
    request = api("/v1/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...query, ...options }),
    });
  } else {
    showError("type a text or drop an image first");
    return;
  }
  setStatus("searching…");
  $("search-button").disabled = true;
  try {
    const response = await request;
    render(response, target);
    const note = response.truncated ? " (query text was cut to the model's context length)" : "";
    setStatus(`${response.results.length} ${target}s${what} in ${response.took_ms.toFixed(1)} ms${note}`);
  } catch (err) {
    setStatus("");
    showError(err.message);
  } finally {
    $("search-button").disabled = false;
  }
}

function moreButton(hit) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link more-like";
  button.textContent = "more like this";
  button.addEventListener("click", () => moreLike(hit.id));
  return button;
}

function scoreBadge(score) {
  const badge = document.createElement("span");
  badge.className = "score";
  badge.textContent = score.toFixed(3);
  badge.title = "cosine similarity to the query";
  return badge;
}

async function setThumbnail(img, url) {
  if (!keyInput.value.trim()) {
    img.src = url; // plain <img>: cached by the browser
    return;
  }
  // With an API key the image must be fetched with the Authorization header.
  try {
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) throw new Error(await errorMessage(response));
    const objectUrl = URL.createObjectURL(await response.blob());
    objectUrls.push(objectUrl);
    img.src = objectUrl;
  } catch (err) {
    img.alt = `image unavailable (${err.message})`;
  }
}

function imageResult(hit) {
  const card = document.createElement("figure");
  card.className = "result image-result";
  card.dataset.id = hit.id;
  const img = document.createElement("img");
  img.alt = hit.caption || `item ${hit.id}`;
  img.loading = "lazy";
  setThumbnail(img, `/v1/items/${hit.id}/image`);
  const caption = document.createElement("figcaption");
  caption.append(scoreBadge(hit.score));
  const text = document.createElement("span");
  text.className = "caption";
  text.textContent = hit.caption || hit.metadata.filename || `#${hit.id}`;
  caption.append(text, moreButton(hit));
  card.append(img, caption);
  return card;
}

function textResult(hit) {
  const row = document.createElement("li");
  row.className = "result text-result";
  row.dataset.id = hit.id;
  const text = document.createElement("span");
  text.className = "caption";
  text.textContent = hit.caption ?? `#${hit.id}`;
  row.append(scoreBadge(hit.score), text, moreButton(hit));
  return row;
}

function render(response, target) {
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls = [];
  const box = $("results");
  box.replaceChildren();
  if (response.results.length === 0) {
    box.textContent = "no results (is the index empty, or are the filter and min score too strict?)";
    return;
  }
  const list = document.createElement(target === "image" ? "div" : "ol");
  list.className = target === "image" ? "grid" : "list";
  list.append(...response.results.map(target === "image" ? imageResult : textResult));
  box.append(list);
}

// --- wiring -----------------------------------------------------------------------------------------
form.addEventListener("submit", (event) => {
  event.preventDefault();
  search();
});
textInput.addEventListener("input", () => {
  if (queryImage && textInput.value) clearImage(); // typing switches back to a text query
  if (textInput.value) queryItem = null;
});
form.querySelectorAll('input[name="target"]').forEach((radio) => {
  radio.addEventListener("change", () => {
    if (queryImage || queryItem !== null || textInput.value.trim()) search();
  });
});
dropZone.addEventListener("click", (event) => {
  if (event.target.id !== "clear-image") fileInput.click();
});
dropZone.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    fileInput.click();
  }
});
fileInput.addEventListener("change", () => chooseImage(fileInput.files[0]));
$("clear-image").addEventListener("click", (event) => {
  event.stopPropagation();
  clearImage();
});
["dragenter", "dragover"].forEach((name) =>
  dropZone.addEventListener(name, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  }),
);
["dragleave", "drop"].forEach((name) =>
  dropZone.addEventListener(name, () => dropZone.classList.remove("dragging")),
);
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  chooseImage(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) chooseImage(file);
});
keyInput.value = sessionStorage.getItem("retrieval-api-key") || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem("retrieval-api-key", keyInput.value.trim());
  loadInfo();
});
loadInfo();

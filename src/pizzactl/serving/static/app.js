// pizzactl web page: send a file or a URL to POST /predict and show the answer.
"use strict";

const $ = (id) => document.getElementById(id);
const percent = (p) => (100 * p).toFixed(1) + "%";
// The pizza model's two labels read better as words; any other model shows its class names.
const TITLES = { pizza: "🍕 Pizza", not_pizza: "Not pizza" };

function show(state) {
  $("result").hidden = false;
  $("status").textContent = state.status || "";
  const label = $("label");
  label.className = "label " + (state.cls || "");
  label.textContent = state.label || "";
  $("bar-fill").style.width = state.probability == null ? "0" : percent(state.probability);
  $("detail").textContent = state.detail || "";
  showClasses(state.probabilities || {});
}

// Every class's probability, most probable first: a row each (name, bar, percentage).
function showClasses(probabilities) {
  const list = $("classes");
  list.replaceChildren();
  const ranked = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of ranked) {
    const row = document.createElement("li");
    const title = document.createElement("span");
    title.className = "class-name";
    title.textContent = name;
    const bar = document.createElement("span");
    bar.className = "bar small";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = percent(p);
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "class-p";
    value.textContent = percent(p);
    row.append(title, bar, value);
    list.append(row);
  }
  list.hidden = ranked.length === 0;
}

// A gateway with API keys answers 401: the page asks for the key, keeps it for this tab only
// (sessionStorage, never in a URL) and sends it as `Authorization: Bearer`.
const KEY_ITEM = "pizzactl-api-key";
let pending = null; // the request the key was asked for, sent again once it is given
let keyInMemory = ""; // where storage is off

function apiKey() {
  try { return sessionStorage.getItem(KEY_ITEM) || keyInMemory; } catch (e) { return keyInMemory; }
}

function keepKey(key) {
  keyInMemory = key;
  try { sessionStorage.setItem(KEY_ITEM, key); } catch (e) { /* storage off: kept in memory only */ }
}

function withKey(request) {
  const key = apiKey();
  if (!key) return request;
  return { ...request, headers: { ...(request.headers || {}), Authorization: "Bearer " + key } };
}

function askForKey(request, previewSrc) {
  pending = [request, previewSrc];
  $("key-form").hidden = false;
  $("api-key").focus();
}

async function ask(request, previewSrc) {
  if (previewSrc) $("preview").src = previewSrc;
  show({ status: "Asking the model…" });
  let response, body;
  try {
    response = await fetch("/predict", withKey(request));
    body = await response.json();
  } catch (e) {
    show({ cls: "error", label: "The gateway cannot be reached.", detail: String(e) });
    return;
  }
  if (response.status === 401) askForKey(request, previewSrc);
  if (!response.ok) {
    const err = (body && body.error) || {};
    show({ cls: "error", label: err.message || "Error " + response.status,
           detail: [err.code, err.hint].filter(Boolean).join(" · ") });
    return;
  }
  // `probability` is P(label), except for a binary model's negative class (P(positive) there).
  const probabilities = body.probabilities || {};
  const p = body.label in probabilities ? probabilities[body.label] : body.probability;
  show({
    status: "",
    cls: body.label in TITLES ? body.label : "",
    label: TITLES[body.label] || body.label,
    probability: p,
    probabilities,
    detail: `P(${body.label}) = ${percent(p)} · model version ${body.model_version}`,
  });
  document.body.dataset.label = body.label;
}

function sendFile(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  ask({ method: "POST", body: form }, URL.createObjectURL(file));
}

document.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (e) => sendFile(e.target.files[0]));
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => sendFile(e.dataTransfer.files[0]));
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    keepKey($("api-key").value.trim());
    $("api-key").value = "";
    $("key-form").hidden = true;
    if (pending) ask(...pending);
  });
  $("url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const url = $("url").value.trim();
    ask({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ url }) }, url);
  });
});

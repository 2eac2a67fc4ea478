// pizzactl web page: send a file or a URL to POST /predict and show the answer.
"use strict";

const $ = (id) => document.getElementById(id);

function show(state) {
  $("result").hidden = false;
  $("status").textContent = state.status || "";
  const label = $("label");
  label.className = "label " + (state.cls || "");
  label.textContent = state.label || "";
  $("bar-fill").style.width = state.probability == null ? "0" : (100 * state.probability).toFixed(1) + "%";
  $("detail").textContent = state.detail || "";
}

async function ask(request, previewSrc) {
  if (previewSrc) $("preview").src = previewSrc;
  show({ status: "Asking the model…" });
  let response, body;
  try {
    response = await fetch("/predict", request);
    body = await response.json();
  } catch (e) {
    show({ cls: "error", label: "The gateway cannot be reached.", detail: String(e) });
    return;
  }
  if (!response.ok) {
    const err = (body && body.error) || {};
    show({ cls: "error", label: err.message || "Error " + response.status,
           detail: [err.code, err.hint].filter(Boolean).join(" · ") });
    return;
  }
  const isPizza = body.label === "pizza";
  show({
    status: "",
    cls: body.label,
    label: isPizza ? "🍕 Pizza" : "Not pizza",
    probability: body.probability,
    detail: `P(pizza) = ${(100 * body.probability).toFixed(1)}% · model version ${body.model_version}`,
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
  $("url-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const url = $("url").value.trim();
    ask({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ url }) }, url);
  });
});

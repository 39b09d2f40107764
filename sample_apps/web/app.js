// The page's glue: load the bundle named by ?bundle= (default ./bundle/), wire the form.
// Everything runs in this tab: the text never leaves the browser.

import * as ort from "./ort/ort.wasm.min.mjs";
import { loadBundle, modelArtifacts } from "./classifier.js";

// Multi-threaded wasm needs cross-origin isolation (COOP/COEP headers); one sentence at a time
// runs in a few milliseconds on one thread, so keep the page simple and servable anywhere.
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const bundleUrl = new URL(params.get("bundle") ?? "./bundle/", location.href).href;

let classifier = null;

function formatBytes(n) {
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`;
}

function setStatus(text, state = "loading") {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function showError(e) {
  $("error").textContent = e.message ?? String(e);
  $("error").hidden = false;
}

function renderResult(result) {
  $("label").textContent = result.label;
  $("score").textContent = result.score.toFixed(4);
  const rows = result.probabilities
    .map(({ label, probability }) => {
      const pct = (probability * 100).toFixed(1);
      return `<tr><th scope="row"></th><td>${probability.toFixed(4)}</td>` +
        `<td><span class="bar" style="width:${pct}%"></span></td></tr>`;
    })
    .join("");
  $("probs").innerHTML = rows;
  // Labels come from the bundle: set them as text, never as HTML.
  $("probs").querySelectorAll("th").forEach((th, i) => {
    th.textContent = result.probabilities[i].label;
  });
  $("timing").textContent = `${result.tokens} tokens, ${result.ms.toFixed(1)} ms in this tab`;
  $("result").hidden = false;
  $("result").dataset.seq = String(Number($("result").dataset.seq) + 1);
}

async function open(file, variant) {
  $("classify").disabled = true;
  $("error").hidden = true;
  setStatus("loading the bundle...");
  try {
    classifier = await loadBundle(bundleUrl, { ort, file, variant, onStatus: (s) => setStatus(s) });
  } catch (e) {
    classifier = null;
    setStatus("could not load the bundle", "error");
    showError(e);
    return;
  }
  const { manifest, artifact } = classifier;
  $("pair-row").hidden = !classifier.isPair;
  $("model-info").textContent =
    `${manifest.task.name || "task"}: labels ${classifier.labels.join(", ")}; ` +
    `${artifact.file} (${artifact.variant}, ${formatBytes(artifact.bytes)}` +
    `${classifier.verifiedSha256 ? ", sha256 checked" : ", sha256 NOT checked: needs https or localhost"})`;
  const picker = $("model");
  picker.replaceChildren(
    ...modelArtifacts(manifest).map((a) => {
      const option = new Option(`${a.file} (${a.variant})`, a.file);
      option.selected = a.file === artifact.file;
      return option;
    }),
  );
  $("classify").disabled = false;
  setStatus("ready", "ready");
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!classifier) return;
  $("error").hidden = true;
  $("classify").disabled = true;
  try {
    const pair = classifier.isPair ? $("text-pair").value : null;
    renderResult(await classifier.predict($("text").value, pair));
  } catch (e) {
    showError(e);
  } finally {
    $("classify").disabled = false;
  }
});

$("text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("form").requestSubmit();
});

$("model").addEventListener("change", () => open($("model").value, null));

open(params.get("file"), params.get("variant") ?? "fp32");

// Load an embslim bundle over HTTP and classify text with onnxruntime-web, in the browser.
//
// The same contract as the Python runtime (runtime/classifier.py): read manifest.json, pick
// a model artifact, check its sha256 and the tokenizer's, tokenize with the bundle's ORIGINAL
// tokenizer.json (the graph remaps ids to its pruned vocabulary itself) with tokenizers.js
// (tokenizer.js: WordPiece, byte-level BPE and Unigram files), feed input_ids /
// attention_mask / token_type_ids as int64, softmax the "logits" output.

import { BundleTokenizer } from "./tokenizer.js";

export const SCHEMA_VERSION = 1;

/** The bundle is missing, damaged, or not one this page can run. */
export class BundleError extends Error {}

async function fetchOk(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new BundleError(`cannot fetch ${url} (${e.message}); is the server running?`);
  }
  if (!response.ok) {
    throw new BundleError(`${url}: HTTP ${response.status}; is the bundle served there?`);
  }
  return response;
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Whether sha256 checks can run: WebCrypto exists only in secure contexts. */
export function canVerify() {
  return typeof crypto !== "undefined" && crypto.subtle !== undefined;
}

async function verified(bytes, entry, name) {
  if (entry && typeof entry.bytes === "number" && entry.bytes !== bytes.byteLength) {
    throw new BundleError(
      `${name}: ${bytes.byteLength} bytes, the manifest says ${entry.bytes}; the file is ` +
        "truncated or replaced: re-export the bundle (or re-download it)",
    );
  }
  if (entry && typeof entry.sha256 === "string" && canVerify()) {
    const got = await sha256Hex(bytes);
    if (got !== entry.sha256) {
      throw new BundleError(
        `${name}: sha256 ${got.slice(0, 12)}..., the manifest says ${entry.sha256.slice(0, 12)}...; ` +
          "the file is damaged or was changed: re-export the bundle (or re-download it)",
      );
    }
  }
  return bytes;
}

/** ONNX model artifacts listed in the manifest (what the variant picker offers). */
export function modelArtifacts(manifest) {
  return manifest.artifacts.filter((a) => typeof a.file === "string" && a.file.endsWith(".onnx"));
}

function pickArtifact(manifest, { file, variant }) {
  const models = modelArtifacts(manifest);
  const found = file
    ? models.find((a) => a.file === file)
    : models.find((a) => a.variant === variant);
  if (!found) {
    const known = models.map((a) => `${a.file} (${a.variant})`).join(", ");
    throw new BundleError(
      `no model ${file ? `file ${file}` : `variant ${variant}`} in the bundle; it has: ${known}`,
    );
  }
  return found;
}

function softmax(logits) {
  const max = Math.max(...logits);
  const exps = logits.map((x) => Math.exp(x - max));
  const sum = exps.reduce((s, x) => s + x, 0);
  return exps.map((x) => x / sum);
}

export class BundleClassifier {
  constructor({ ort, session, tokenizer, manifest, artifact, verifiedSha256 }) {
    this.ort = ort;
    this.session = session;
    this.tokenizer = tokenizer;
    this.manifest = manifest;
    this.artifact = artifact;
    this.verifiedSha256 = verifiedSha256;
    this.labels = manifest.task.labels.map(String);
    this.isPair = Boolean(manifest.task.pair);
    this.maxLength = manifest.task.max_length;
  }

  /** Classify one text (or one pair): {label, score, probabilities, tokens, ms}. */
  async predict(text, pair = null) {
    if (this.isPair && (pair === null || pair === undefined)) {
      throw new TypeError("this bundle classifies text pairs: give a second text");
    }
    const started = performance.now();
    const enc = this.tokenizer.encode(text, this.isPair ? pair : null);
    const n = enc.inputIds.length;
    const all = {
      input_ids: enc.inputIds,
      attention_mask: enc.attentionMask,
      token_type_ids: enc.typeIds,
    };
    const feeds = {};
    for (const name of this.session.inputNames) {
      if (!(name in all)) throw new BundleError(`the graph asks for an unknown input ${name}`);
      feeds[name] = new this.ort.Tensor("int64", BigInt64Array.from(all[name], BigInt), [1, n]);
    }
    const outputs = await this.session.run(feeds);
    if (!outputs.logits) throw new BundleError("the graph has no 'logits' output");
    const logits = Array.from(outputs.logits.data);
    if (logits.length !== this.labels.length) {
      throw new BundleError(
        `the model returns ${logits.length} logits for ${this.labels.length} labels`,
      );
    }
    const probs = softmax(logits);
    let best = 0;
    probs.forEach((p, i) => {
      if (p > probs[best]) best = i;
    });
    return {
      label: this.labels[best],
      score: probs[best],
      probabilities: this.labels.map((label, i) => ({ label, probability: probs[i] })),
      tokens: n,
      ms: performance.now() - started,
    };
  }
}

/**
 * Fetch a bundle from `baseUrl` (a folder URL ending in "/") and open an ORT session.
 * `ort` is the onnxruntime-web module; pick the model by `file` or by `variant`.
 */
export async function loadBundle(baseUrl, { ort, file = null, variant = "fp32", onStatus = () => {} }) {
  const base = baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`;
  onStatus("reading manifest.json");
  const manifest = await (await fetchOk(`${base}manifest.json`)).json();
  if (manifest.schema_version !== SCHEMA_VERSION) {
    throw new BundleError(
      `manifest.json has schema_version ${manifest.schema_version}; this page reads ` +
        `${SCHEMA_VERSION}: use the sample app from the same embslim version as the bundle`,
    );
  }
  const artifact = pickArtifact(manifest, { file, variant });
  const tokFile = manifest.tokenizer.file;
  const tokEntry = manifest.artifacts.find((a) => a.file === tokFile) ?? manifest.tokenizer;
  onStatus(`downloading ${tokFile}`);
  const tokBytes = await verified(
    await (await fetchOk(base + tokFile)).arrayBuffer(), tokEntry, tokFile,
  );
  let tokenizer;
  try {
    tokenizer = new BundleTokenizer(JSON.parse(new TextDecoder().decode(tokBytes)), {
      maxLength: manifest.task.max_length,
    });
  } catch (e) {
    throw new BundleError(`${tokFile}: ${e.message}; re-export the bundle (or re-download it)`);
  }
  onStatus(`downloading ${artifact.file} (${artifact.bytes} bytes)`);
  const modelBytes = await verified(
    await (await fetchOk(base + artifact.file)).arrayBuffer(), artifact, artifact.file,
  );
  onStatus(`starting onnxruntime-web on ${artifact.file}`);
  let session;
  try {
    session = await ort.InferenceSession.create(new Uint8Array(modelBytes), {
      executionProviders: ["wasm"],
    });
  } catch (e) {
    throw new BundleError(`onnxruntime-web cannot load ${artifact.file}: ${e.message}`);
  }
  return new BundleClassifier({
    ort, session, tokenizer, manifest, artifact, verifiedSha256: canVerify(),
  });
}

// The bundle's tokenizer.json in the browser, read by tokenizers.js (@huggingface/tokenizers on
// npm): its normalizers, pre-tokenizers, models (WordPiece, byte-level BPE, Unigram) and
// post-processors do the tokenizing. This file only adds what the library leaves to the caller
// and the Python runtime (runtime/tokens.py) configures: no padding, truncation of the text (or
// of both texts of a pair, "longest_first") at the bundle's max_length, and the well-formed-text
// rule for lone surrogates; plus three places where tokenizers.js 0.2.0 differs from the Rust
// library (word-final capital sigma, RoBERTa type ids, ByteLevel-only post-processors). The ids must equal `tokenizers.Tokenizer.from_file` configured that
// way; tests/sample_apps/test_web_tokenizer.py checks it in headless Chromium.
//
// "@huggingface/tokenizers" resolves through index.html's import map (served by serve.py from
// node_modules) in the page, and through node_modules under node.

import { Tokenizer } from "@huggingface/tokenizers";

/** The tokenizer.json cannot be used (unreadable, or a component tokenizers.js lacks). */
export class TokenizerError extends Error {}

/**
 * Lone UTF-16 surrogates (a half of an emoji pasted or cut) become U+FFFD, as a browser does
 * when it encodes such a string as UTF-8 (TextEncoder, form posts): the text is tokenized as
 * the server would receive it. Well-formed text is returned unchanged.
 */
export function wellFormed(text) {
  return String(text).toWellFormed();
}

/**
 * The `tokenizers` library's truncation (Rust, tokenizer/mod.rs `truncate_encodings`) of the
 * content tokens `a` (and `b`) to `budget` = max_length minus the special tokens the
 * post-processor adds; strategy "longest_first", direction right, stride 0.
 */
export function truncate(a, b, budget) {
  if (b === null) return [a.slice(0, Math.max(budget, 0)), null];
  if (a.length + b.length <= budget) return [a, b];
  const swap = a.length > b.length;
  let n1 = Math.min(a.length, b.length);
  let n2 = n1 > budget ? n1 : Math.max(n1, budget - n1);
  if (n1 + n2 > budget) {
    n1 = Math.floor(budget / 2);
    n2 = n1 + (budget % 2);
  }
  if (swap) [n1, n2] = [n2, n1];
  return [a.slice(0, n1), b.slice(0, n2)];
}

/** Whether a tokenizer.json component, or one in its Sequence's `key` list, passes `test`. */
function usesComponent(config, key, test) {
  if (!config) return false;
  if (test(config)) return true;
  return (config[key] ?? []).some((c) => usesComponent(c, key, test));
}

export class BundleTokenizer {
  /** `json`: the parsed tokenizer.json; `maxLength`: the bundle's task.max_length. */
  constructor(json, { maxLength }) {
    if (!Number.isInteger(maxLength) || maxLength < 1) {
      throw new TokenizerError(`max_length must be a positive integer, got ${maxLength}`);
    }
    try {
      // The second argument is tokenizer_config.json; tokenizer.json alone decides the ids.
      this.tokenizer = new Tokenizer(json, {});
    } catch (e) {
      const model = json?.model?.type ?? "unknown";
      throw new TokenizerError(
        `tokenizers.js cannot read this tokenizer.json (${model} model): ${e.message}`,
      );
    }
    this.maxLength = maxLength;
    this.modelType = json.model?.type ?? "unknown";
    this.lowercases = usesComponent(json.normalizer, "normalizers", (c) =>
      c.type === "Lowercase" || (c.type === "BertNormalizer" && c.lowercase !== false));
    // Rust's RobertaProcessing gives every token type id 0, the pair's second text too
    // (RoBERTa has one token type); tokenizers.js gives that text 1.
    this.typeIdsAllZero = usesComponent(json.post_processor, "processors",
      (c) => c.type === "RobertaProcessing");
    // How many special tokens the post-processor adds to one text and to a pair.
    this.added = {
      single: this.postProcess([], null).ids.length,
      pair: this.postProcess([], []).ids.length,
    };
  }

  /** Ids of the text's content tokens, no special tokens, not truncated. */
  contentIds(text) {
    let clean = wellFormed(text);
    // Rust lower-cases one code point at a time (Σ -> σ everywhere); JavaScript's toLowerCase
    // writes a word-final Σ as ς, a different token. Σ -> σ first gives Rust's result.
    if (this.lowercases) clean = clean.replaceAll("\u03a3", "\u03c3");
    return this.tokenizer.encode(clean, { add_special_tokens: false }).ids;
  }

  /** Add the post-processor's special tokens (and type ids) around content ids. */
  postProcess(a, b) {
    const processor = this.tokenizer.post_processor;
    let out;
    if (processor) {
      out = processor(a, b, true);
    } else {
      out = { tokens: b === null ? a : [...a, ...b] };
    }
    let { tokens, token_type_ids: typeIds } = out;
    if (Array.isArray(out.tokens_pair)) {
      // A ByteLevel post-processor alone hands both texts back unjoined; Rust joins them.
      tokens = [...tokens, ...out.tokens_pair];
      typeIds = null;
    }
    // Post-processors put special tokens in as strings and content as the ids they were given.
    const ids = tokens.map((t) => (typeof t === "string" ? this.idOf(t) : t));
    if (this.typeIdsAllZero) return { ids, typeIds: new Array(ids.length).fill(0) };
    // No template: Rust gives the first text type id 0 and the second 1.
    typeIds ??= [...new Array(a.length).fill(0), ...new Array(b === null ? 0 : b.length).fill(1)];
    return { ids, typeIds };
  }

  idOf(token) {
    const id = this.tokenizer.token_to_id(token);
    if (id === undefined) {
      throw new TokenizerError(
        `the post-processor's special token ${token} is not in the vocabulary`,
      );
    }
    return id;
  }

  /** {inputIds, attentionMask, typeIds} for one text or a pair, as the Python runtime has them. */
  encode(text, pair = null) {
    const a = this.contentIds(text);
    const b = pair === null || pair === undefined ? null : this.contentIds(pair);
    const added = b === null ? this.added.single : this.added.pair;
    const [ta, tb] = truncate(a, b, this.maxLength - added);
    const { ids, typeIds } = this.postProcess(ta, tb);
    return { inputIds: ids, attentionMask: new Array(ids.length).fill(1), typeIds };
  }
}

// A BERT WordPiece tokenizer in plain JavaScript that reads a Hugging Face tokenizer.json
// (BertNormalizer + BertPreTokenizer + WordPiece + [CLS]/[SEP] template) and gives the same
// ids as the `tokenizers` library with padding off and truncation at max_length (what the
// Python runtime does). No DOM, no dependencies: it runs in the browser and under node.
//
// The steps, in the order the Rust library applies them:
//   1. special tokens ([CLS], [SEP], ...) written in the raw text are matched first
//      (tokenizer.json "added_tokens" with normalized=false), leftmost-longest;
//   2. BertNormalizer: drop \0, U+FFFD and control/format characters (tab, newline and
//      carriage return excepted), turn whitespace into a space, put spaces around CJK
//      ideographs, strip accents (NFD, then drop non-spacing marks), lower-case
//      (code point by code point, as Rust does: no final-sigma rule);
//   3. BertPreTokenizer: split on whitespace, and split off every punctuation character
//      (Unicode P* categories and all ASCII punctuation, so "$" and "+" count);
//   4. WordPiece: greedy longest match from the left, continuations prefixed "##"; a word
//      with a piece not in the vocabulary (or over max_input_chars_per_word characters)
//      becomes [UNK];
//   5. truncation to max_length including [CLS]/[SEP] (pairs: "longest_first", the
//      library's default), then the template [CLS] A [SEP] (B [SEP]).
//
// Known limit: character classes come from this JavaScript engine's Unicode tables and the
// Rust library's from its own, which may be of another Unicode version; the two can disagree
// on code points that were unassigned in one of them (no real text uses those).

const CJK_RANGES = [
  [0x4e00, 0x9fff], [0x3400, 0x4dbf], [0x20000, 0x2a6df], [0x2a700, 0x2b73f],
  [0x2b740, 0x2b81f], [0x2b920, 0x2ceaf], [0xf900, 0xfaff], [0x2f800, 0x2fa1f],
];
const OTHER = /\p{C}/u; // Cc, Cf, Cs, Co, Cn: what Rust's `is_other` tests
const WHITESPACE = /\p{White_Space}/u; // Rust's char::is_whitespace
const NONSPACING_MARK = /\p{Mn}/gu;
const PUNCTUATION = /\p{P}/u;
const ASCII_PUNCTUATION = new Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");

function isCJK(cp) {
  return CJK_RANGES.some(([lo, hi]) => cp >= lo && cp <= hi);
}

function isWhitespace(ch) {
  return ch === "\t" || ch === "\n" || ch === "\r" || WHITESPACE.test(ch);
}

function isControl(ch) {
  return !(ch === "\t" || ch === "\n" || ch === "\r") && OTHER.test(ch);
}

function isPunctuation(ch) {
  return ASCII_PUNCTUATION.has(ch) || PUNCTUATION.test(ch);
}

/** Raised when a tokenizer.json is not one this file knows how to reproduce exactly. */
export class UnsupportedTokenizerError extends Error {}

export class WordPieceTokenizer {
  /**
   * @param {object} json the parsed tokenizer.json
   * @param {{maxLength: number}} options truncation length, [CLS] and [SEP] included
   */
  constructor(json, { maxLength }) {
    const model = json.model || {};
    if (model.type !== "WordPiece") {
      throw new UnsupportedTokenizerError(
        `tokenizer.json has a ${model.type} model; this page supports only BERT WordPiece ` +
          "tokenizers (bert-base, MiniLM, ...): use the Python runtime for this bundle",
      );
    }
    const norm = json.normalizer || { type: "none" };
    if (norm.type !== "BertNormalizer") {
      throw new UnsupportedTokenizerError(
        `tokenizer.json has a ${norm.type} normalizer, expected BertNormalizer`,
      );
    }
    const pre = json.pre_tokenizer || { type: "none" };
    if (pre.type !== "BertPreTokenizer") {
      throw new UnsupportedTokenizerError(
        `tokenizer.json has a ${pre.type} pre-tokenizer, expected BertPreTokenizer`,
      );
    }
    if (!Number.isInteger(maxLength) || maxLength < 3) {
      throw new RangeError(`maxLength must be an integer >= 3, got ${maxLength}`);
    }
    this.vocab = new Map(Object.entries(model.vocab));
    this.unkToken = model.unk_token ?? "[UNK]";
    this.prefix = model.continuing_subword_prefix ?? "##";
    this.maxInputCharsPerWord = model.max_input_chars_per_word ?? 100;
    this.cleanText = norm.clean_text ?? true;
    this.handleChineseChars = norm.handle_chinese_chars ?? true;
    this.lowercase = norm.lowercase ?? true;
    this.stripAccents = norm.strip_accents ?? this.lowercase; // null means "follow lowercase"
    this.maxLength = maxLength;
    this.clsId = this._id("[CLS]");
    this.sepId = this._id("[SEP]");
    this.unkId = this._id(this.unkToken);
    // Only added tokens matched on the raw text are supported (all BERT tokenizers).
    this.special = (json.added_tokens || [])
      .filter((t) => t.normalized === false)
      .map((t) => ({ content: t.content, id: t.id }))
      .sort((a, b) => b.content.length - a.content.length);
  }

  _id(token) {
    const id = this.vocab.get(token);
    if (id === undefined) {
      throw new UnsupportedTokenizerError(`tokenizer.json vocabulary has no ${token} token`);
    }
    return id;
  }

  /**
   * Encode one text, or a pair when `pair` is a string.
   * @returns {{inputIds: number[], typeIds: number[], attentionMask: number[]}}
   */
  encode(text, pair = null) {
    let a = this.tokenIds(text);
    let b = pair === null || pair === undefined ? null : this.tokenIds(pair);
    if (b === null) {
      a = a.slice(0, Math.max(0, this.maxLength - 2));
      const inputIds = [this.clsId, ...a, this.sepId];
      return { inputIds, typeIds: inputIds.map(() => 0), attentionMask: inputIds.map(() => 1) };
    }
    [a, b] = truncateLongestFirst(a, b, this.maxLength - 3);
    const inputIds = [this.clsId, ...a, this.sepId, ...b, this.sepId];
    const typeIds = [...Array(a.length + 2).fill(0), ...Array(b.length + 1).fill(1)];
    return { inputIds, typeIds, attentionMask: inputIds.map(() => 1) };
  }

  /** Word-piece ids of a text, without [CLS]/[SEP] and without truncation. */
  tokenIds(text) {
    if (typeof text !== "string") {
      throw new TypeError(`expected a string, got ${typeof text}`);
    }
    const ids = [];
    for (const segment of this._splitSpecial(text)) {
      if (segment.id !== undefined) {
        ids.push(segment.id);
        continue;
      }
      for (const word of this.preTokenize(this.normalize(segment.text))) {
        ids.push(...this.wordPiece(word));
      }
    }
    return ids;
  }

  /** The text split around special tokens: [{text}, {id}, {text}, ...]. */
  _splitSpecial(text) {
    const out = [];
    let start = 0;
    let i = 0;
    outer: while (i < text.length) {
      for (const tok of this.special) {
        if (text.startsWith(tok.content, i)) {
          if (i > start) out.push({ text: text.slice(start, i) });
          out.push({ id: tok.id });
          i += tok.content.length;
          start = i;
          continue outer;
        }
      }
      i += 1;
    }
    if (start < text.length) out.push({ text: text.slice(start) });
    return out;
  }

  normalize(text) {
    let chars = Array.from(text);
    if (this.cleanText) {
      chars = chars
        .filter((c) => !(c === "\0" || c === "\ufffd" || isControl(c)))
        .map((c) => (isWhitespace(c) ? " " : c));
    }
    if (this.handleChineseChars) {
      chars = chars.map((c) => (isCJK(c.codePointAt(0)) ? ` ${c} ` : c));
    }
    let out = chars.join("");
    if (this.stripAccents) {
      out = out.normalize("NFD").replace(NONSPACING_MARK, "");
    }
    if (this.lowercase) {
      out = Array.from(out, (c) => c.toLowerCase()).join("");
    }
    return out;
  }

  preTokenize(text) {
    const words = [];
    let current = "";
    for (const c of text) {
      if (isWhitespace(c)) {
        if (current) words.push(current);
        current = "";
      } else if (isPunctuation(c)) {
        if (current) words.push(current);
        words.push(c);
        current = "";
      } else {
        current += c;
      }
    }
    if (current) words.push(current);
    return words;
  }

  wordPiece(word) {
    const chars = Array.from(word);
    if (chars.length > this.maxInputCharsPerWord) return [this.unkId];
    const ids = [];
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let found;
      while (start < end) {
        let piece = chars.slice(start, end).join("");
        if (start > 0) piece = this.prefix + piece;
        found = this.vocab.get(piece);
        if (found !== undefined) break;
        end -= 1;
      }
      if (found === undefined) return [this.unkId];
      ids.push(found);
      start = end;
    }
    return ids;
  }
}

/**
 * The `tokenizers` library's "longest_first" truncation of a pair to `budget` tokens
 * (max_length minus the three special tokens).
 */
export function truncateLongestFirst(a, b, budget) {
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

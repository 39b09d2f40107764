// Test helper: run sample_apps/web/wordpiece.js under node on the texts given as JSON on stdin
// ({"tokenizer": path, "max_length": n, "items": [text or [text, pair], ...]}) and print the
// ids as JSON ([{"input_ids": [...], "type_ids": [...]}, ...]).
import { readFileSync } from "node:fs";
import { WordPieceTokenizer } from "../../sample_apps/web/wordpiece.js";

const request = JSON.parse(readFileSync(0, "utf8"));
const json = JSON.parse(readFileSync(request.tokenizer, "utf8"));
const tokenizer = new WordPieceTokenizer(json, { maxLength: request.max_length });
const out = request.items.map((item) => {
  const enc = Array.isArray(item) ? tokenizer.encode(item[0], item[1]) : tokenizer.encode(item);
  return { input_ids: enc.inputIds, type_ids: enc.typeIds };
});
process.stdout.write(JSON.stringify(out));

"""An embslim embedding bundle against sentence-transformers' own ONNX exports of the same model, in one run.

sentence-transformers exports its ONNX backend through Optimum (`SentenceTransformer(path,
backend="onnx")`, saved as `onnx/model.onnx`) and quantizes it with
`export_dynamic_quantized_onnx_model(model, "arm64", ...)` (`onnx/model_qint8_arm64.onnx`). Each
of those files and each ONNX file of the bundle is measured the same way:

- bytes of the file (ratio against sentence-transformers' int8 file);
- cosine of its sentence embeddings to the fp32 PyTorch original on held-out texts (mean, 1st
  percentile, min): CLINC150's test texts;
- CLINC150 intent accuracy by nearest neighbour (k = 1, cosine; index: the in-scope training
  texts, queries: the in-scope test texts) and MRPC dev ROC-AUC of pair cosine;
- p50 latency (batch 1, 32 tokens, 1 thread) and peak RSS of a fresh process
  (`embslim.pipeline.probe`, the same probe for every file).

The bundle's files run through `embslim.runtime.Embedder`; sentence-transformers' through
`SentenceTransformer(..., backend="onnx")`, i.e. each as its users run it.

    python benchmarks/embeddings_vs_st.py --bundle out/clinc150-embed --data-root ../shared/data \\
        --out out/embeddings-vs-st

Writes `<out>/results.json` and `<out>/results.md` (the table quoted in the README).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _clinc(data_root: str) -> tuple[list[str], list[str], list[str], list[str]]:
    data = json.loads((Path(data_root) / "clinc150" / "data_full.json").read_text(encoding="utf-8"))
    return ([t for t, _ in data["train"]], [y for _, y in data["train"]], [t for t, _ in data["test"]],
            [y for _, y in data["test"]])


def _mrpc(data_root: str) -> tuple[list[str], list[str], list[int]]:
    import csv

    with open(Path(data_root) / "mrpc" / "dev.tsv", encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["#1 String"] for r in rows], [r["#2 String"] for r in rows], [int(r["Quality"]) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True, help="an embslim feature-extraction bundle")
    p.add_argument("--model", default="default", help="the model the bundle was made from (default: bundled MiniLM)")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--out", required=True, help="folder for sentence-transformers' exports and the results")
    p.add_argument("--files", nargs="*", help="bundle files to measure (default: every .onnx/.ort model in it)")
    p.add_argument("--latency-runs", type=int, default=200)
    args = p.parse_args()

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    from embslim.pipeline.model import resolve_model
    from embslim.pipeline.probe import measure
    from embslim.pipeline.scoring import cosine_stats, knn_accuracy, pair_auc
    from embslim.pipeline.validate import latency_ids
    from embslim.runtime import Embedder

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle)
    source = resolve_model(args.model)
    index_texts, index_labels, query_texts, query_labels = _clinc(args.data_root)
    a_texts, b_texts, pair_labels = _mrpc(args.data_root)
    print(f"CLINC150: {len(index_texts)} index texts, {len(query_texts)} queries; MRPC dev: {len(pair_labels)} pairs")

    t0 = time.perf_counter()
    original = SentenceTransformer(source, device="cpu")
    reference = original.encode(query_texts, batch_size=64, convert_to_numpy=True)
    print(f"fp32 PyTorch original encoded the {len(query_texts)} test texts in {time.perf_counter() - t0:.0f} s")

    st_dir = out / "st-onnx"
    if not (st_dir / "onnx" / "model_qint8_arm64.onnx").is_file():
        st = SentenceTransformer(source, backend="onnx", device="cpu")   # Optimum exports it
        st.save_pretrained(str(st_dir))
        export_dynamic_quantized_onnx_model(st, "arm64", str(st_dir))
    entries = [("sentence-transformers ONNX (fp32)", st_dir / "onnx" / "model.onnx", "st"),
               ("sentence-transformers int8 (arm64 config)", st_dir / "onnx" / "model_qint8_arm64.onnx", "st")]
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = args.files or [a["file"] for a in manifest["artifacts"] if a["file"].endswith((".onnx", ".ort"))]
    entries += [(f"embslim {f}", bundle / f, "embslim") for f in files]

    ids = latency_ids(bundle / "tokenizer.json", query_texts, seq_len=32)
    rows = []
    for label, path, kind in entries:
        t0 = time.perf_counter()
        if kind == "st":
            model = SentenceTransformer(str(st_dir), backend="onnx", device="cpu",
                                        model_kwargs={"file_name": str(path.relative_to(st_dir))})

            def encode(texts, model=model):
                return model.encode(texts, batch_size=32, convert_to_numpy=True)
        else:
            model = Embedder.from_bundle(bundle, file=path.name)

            def encode(texts, model=model):
                return model.encode(texts, batch_size=32)
        queries = encode(query_texts)
        row = {"name": label, "file": str(path), "bytes": path.stat().st_size}
        row |= cosine_stats(queries, reference)
        in_scope = [i for i, y in enumerate(index_labels) if y != "oos"]
        q_in = [i for i, y in enumerate(query_labels) if y != "oos"]
        index = encode([index_texts[i] for i in in_scope])
        row["knn_accuracy"] = knn_accuracy(index, [index_labels[i] for i in in_scope], queries[q_in],
                                           [query_labels[i] for i in q_in])
        row["pair_auc"] = pair_auc(encode(a_texts), encode(b_texts), pair_labels)
        row |= measure(path, ids, runs=args.latency_runs, threads=1)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)

    base = next(r for r in rows if "qint8" in r["file"])
    lines = [f"Reference for ratios: {base['name']} ({base['bytes'] / 1e6:.1f} MB). Cosine: to the fp32 PyTorch original "
             f"on the {len(query_texts)} CLINC150 test texts. kNN: CLINC150 in-scope test queries vs in-scope train texts "
             "(k = 1, cosine). AUC: MRPC dev pair cosine vs label. Latency: batch 1, 32 tokens, 1 thread, p50; RSS: "
             "peak of a fresh process.", "",
             "| file | MB | x ST int8 | cosine mean | cosine p1 | cosine min | CLINC150 kNN % | MRPC AUC | p50 ms | x ST int8 p50 | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['bytes'] / 1e6:.2f} | {r['bytes'] / base['bytes']:.2f} | {r['cosine_mean']:.4f} | "
                     f"{r['cosine_p1']:.4f} | {r['cosine_min']:.4f} | {100 * r['knn_accuracy']:.2f} | {r['pair_auc']:.4f} | "
                     f"{r['latency_ms_p50']:.2f} | {r['latency_ms_p50'] / base['latency_ms_p50']:.2f} | {r['peak_rss_mb']:.0f} |")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

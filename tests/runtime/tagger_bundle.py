"""Token-classification bundles for tests, exported by embslim's own `export_model` (needs torch).

`make_tagger_bundle(folder, family="bert" | "roberta")` saves a tiny random tagger (the WordPiece
BERT of `tiny_models.make_tiny_model_dir`, with a WordPiece decoder as real BERT files have, or
the byte-level BPE RoBERTa of `make_tiny_bpe_model_dir`), scales its classifier so that tags
vary from token to token (a random head's logits are all near 0, so every token would get the
same tag), and exports it with `task_type="token-classification"`. Tests using it skip when
torch is absent: `pytest.importorskip("torch")` first.
"""

from __future__ import annotations

from pathlib import Path

# WNUT-17's tag set (BIO); "creative-work" has a "-" in its name, as transformers' grouping sees it.
WNUT_LABELS = (
    "O", "B-person", "I-person", "B-location", "I-location", "B-corporation", "I-corporation",
    "B-product", "I-product", "B-creative-work", "I-creative-work", "B-group", "I-group",
)  # fmt: skip


def make_tagger_bundle(
    folder: str | Path,
    *,
    family: str = "bert",
    labels: tuple[str, ...] = WNUT_LABELS,
    max_length: int = 48,
    seed: int = 0,
    scale: float = 40.0,
    o_bias: float = 1.5,
) -> Path:
    """Write `folder/bundle` (a token-classification bundle) and return its path.

    scale: multiplies the classifier's weights, so per-token logits differ by several units;
    o_bias: added to the "O" logit, so that about half the tokens are "O" and entities are
    runs of B-/I- tags between them, as in real NER output.
    """
    import torch
    from tiny_models import make_tiny_bpe_model_dir, make_tiny_model_dir
    from tokenizers import Tokenizer, decoders

    from embslim.pipeline.bundle import BundleMeta, export_model
    from embslim.pipeline.model import load_classifier

    folder = Path(folder)
    src = folder / "src"
    if family == "bert":
        make_tiny_model_dir(src, seed=seed)
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        # As bert-base's tokenizer.json has them: a WordPiece decoder, and the special tokens as
        # added tokens (so "[CLS]" typed in a text is one token, as transformers loads it).
        tok.decoder = decoders.WordPiece()
        tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok.save(str(src / "tokenizer.json"))
    elif family == "roberta":
        make_tiny_bpe_model_dir(src, seed=seed)
    else:
        raise ValueError(f"family must be 'bert' or 'roberta', got {family!r}")
    loaded = load_classifier(str(src), labels=labels, task="token-classification")
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        head = loaded.model.classifier
        head.weight.normal_(0.0, 0.02).mul_(scale)
        head.bias.zero_()
        if "O" in labels:
            head.bias[labels.index("O")] = o_bias
    loaded.model.eval()
    meta = BundleMeta(
        task_name=f"tiny-ner-{family}", labels=tuple(labels), is_pair=False, max_length=max_length,
        source={"name": f"tiny-{family}-tagger", "family": family, "weights_sha256": None},
        input_names=loaded.input_names, tokenizer_json=str(src / "tokenizer.json"),
        task_type="token-classification",
    )  # fmt: skip
    bundle = folder / "bundle"
    export_model(loaded.model, loaded.tokenizer, bundle, meta=meta)
    return bundle

"""Tiny models and tokenizers built in memory for tests (no network); importable as `tiny_models`."""

from __future__ import annotations

from pathlib import Path

WORDS = ("the a an and or but not no very really quite so too movie film story plot acting actors music "
         "good great fine fun funny charming lovely brilliant moving warm best bad awful dull boring poor "
         "weak worst mess flat slow tedious it is was are be this that with of to in for on as at by "
         "what how when where who can could would i you we they he she my your our play set alarm "
         "weather rain sun call mom transfer money bank card balance paris london song ##s ##ing ##ed ##ly "
         # the generated sentiment task's words (embslim.pipeline.data.synthetic_sentiment)
         "wonderful delightful excellent enjoyable fantastic clever terrible clumsy disappointing painful "
         "forgettable annoying dialogue ending every felt finish found friends from honestly me overall "
         "pacing said scene sounded soundtrack start think truly").split()


def build_wordpiece(path: Path, *, extra: tuple[str, ...] = ()) -> Path:
    """A BERT-style tokenizer.json: [PAD]=0, lower-casing, WordPiece, [CLS] x [SEP] y [SEP] templates."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-")
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + chars + [f"##{c}" for c in chars[:26]] + list(WORDS) + list(extra)))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    # Like all-MiniLM-L6-v2's tokenizer.json: fixed padding and truncation switched on.
    tok.enable_padding(length=32, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def make_tiny_model_dir(folder: Path, *, family: str = "bert", num_labels: int = 2, seed: int = 0,
                        id2label: dict[int, str] | None = None, head: str | None = None) -> Path:
    """Save a tiny random model of `family` with the tiny WordPiece tokenizer into `folder`: a bare
    encoder (architectures `BertModel`, like a pretrained checkpoint), or with `head` "sequence" /
    "token" a classifier with that head and `id2label` (like a fine-tuned checkpoint)."""
    import torch
    from transformers import (AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                              BertTokenizerFast, PreTrainedTokenizerFast)

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    build_wordpiece(folder / "tokenizer.json")
    if family == "bert":
        from transformers import BertConfig as Config

        tokenizer = BertTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
        extra = {"type_vocab_size": 2}
    elif family == "distilbert":
        from transformers import DistilBertConfig as Config

        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), model_input_names=["input_ids", "attention_mask"])
        extra = {}
    elif family == "roberta":
        from transformers import RobertaConfig as Config

        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), model_input_names=["input_ids", "attention_mask"])
        extra = {"type_vocab_size": 1, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    else:
        raise ValueError(family)
    tokenizer.add_special_tokens({"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                  "sep_token": "[SEP]", "mask_token": "[MASK]"})
    vocab_size = len(tokenizer)
    if family == "distilbert":
        config = Config(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=num_labels, **extra)
    else:
        config = Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels, **extra)
    if id2label is not None:
        config.id2label = dict(id2label)
        config.label2id = {v: k for k, v in id2label.items()}
    auto = {None: AutoModel, "sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}[head]
    model = auto.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    build_wordpiece(folder / "tokenizer.json")  # keep the original file (fixed padding on), as a real model ships it
    return folder


def write_task_tsv(folder: Path, task) -> tuple[Path, Path]:
    """`task`'s train and eval splits as GLUE-style TSV files (sentence, label name) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in (("train.tsv", task.train), ("dev.tsv", task.eval)):
        rows = ["sentence\tlabel"] + [f"{t}\t{task.label_names[y]}" for t, y in zip(split.texts, split.labels)]
        (folder / name).write_text("\n".join(rows) + "\n")
    return folder / "train.tsv", folder / "dev.tsv"


def make_tiny_sentence_model_dir(folder: Path, *, family: str = "bert", pooling: str = "mean", dense: int = 0,
                                 normalize: bool = True, seed: int = 0) -> Path:
    """A tiny sentence-transformers model saved by sentence-transformers itself: a tiny random
    encoder (`make_tiny_model_dir`), `Pooling(pooling)`, `dense` Dense layers (Tanh, 32 -> 24 -> ...)
    and `Normalize` when asked, as `SentenceTransformer.save` writes them (modules.json etc.)."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    encoder_dir = make_tiny_model_dir(folder.parent / f".{folder.name}-encoder", family=family, seed=seed)
    transformer = models.Transformer(str(encoder_dir), max_seq_length=64)
    modules = [transformer, models.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)]
    width = transformer.get_embedding_dimension()
    torch.manual_seed(seed + 1)
    for _ in range(dense):
        modules.append(models.Dense(width, width - 8, activation_function=torch.nn.Tanh()))
        width -= 8
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    build_wordpiece(folder / "tokenizer.json")  # the original file (fixed padding on), as a real model ships it
    return folder


# Sentences the tiny byte-level BPE learns its merges from: the tiny vocabulary's words, and the
# kind of text a tagger sees (names, places, accents, emoji, punctuation).
BPE_CORPUS = [" ".join(WORDS)] * 3 + [
    "Ada Lovelace lives in London and works at the Bank of Paris",
    "call mom when the rain stops, she said; the weather in São Paulo is lovely",
    "@john_doe just watched Star Wars at AMC Theatres in New York City !!",
    "Café crème, déjà vu: a naïve façade in Zürich 😀👍🏽 #blessed",
    "RT @user : Apple and Microsoft announced the new iPhone 12 , Windows 11 and Xbox",
] * 4


def build_byte_level_bpe_tokenizer(path: Path, *, vocab_size: int = 600) -> Path:
    """A RoBERTa-style tokenizer.json trained here: ByteLevel pre-tokenizer (no prefix space) and
    decoder, byte-level BPE, RobertaProcessing (`<s> x </s>`, trim_offsets) with
    <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4, as roberta-base's file has them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(BPE_CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def make_tiny_bpe_model_dir(folder: Path, *, head: str | None = None, num_labels: int = 2,
                            id2label: dict[int, str] | None = None, seed: int = 0) -> Path:
    """Save a tiny random RoBERTa with a byte-level BPE tokenizer trained here into `folder`
    (`RobertaTokenizerFast` files plus the original tokenizer.json): a bare encoder
    (`RobertaModel`), or with `head` "sequence" / "token" a classifier with that head and
    `id2label`. RoBERTa's ids: pad 1, bos <s> 0, eos </s> 2; positions start after pad, so
    max_position_embeddings is 130 for 128 tokens."""
    import torch
    from transformers import (AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification,
                              RobertaConfig, RobertaTokenizerFast)

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tok_path = build_byte_level_bpe_tokenizer(folder / "tokenizer.json")
    tokenizer = RobertaTokenizerFast(tokenizer_file=str(tok_path), add_prefix_space=False, trim_offsets=True)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2, num_labels=num_labels)
    if id2label is not None:
        config.id2label = dict(id2label)
        config.label2id = {v: k for k, v in id2label.items()}
    auto = {None: AutoModel, "sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}[head]
    model = auto.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    build_byte_level_bpe_tokenizer(folder / "tokenizer.json")  # the original file, as a real model ships it
    return folder

"""The tasks embslim builds bundles for, named as Optimum's TasksManager names them, as data.

A task says what differs between journeys and nothing else: which `AutoModelFor...` class loads
it, which architectures carry its head (so `--task` can be inferred from a model's config and a
model with the wrong head refused), the ONNX outputs and their dynamic axes (Optimum's
`_TASK_TO_COMMON_OUTPUTS`), the Hugging Face pipeline tag of its model card and the
`embslim.runtime` class that loads its bundles. The stages read these fields; they hold no
`if task == ...` chains.

All three are built: `text-classification`, `feature-extraction` (sentence embeddings) and
`token-classification` (NER / PII tagging: word-level tags, per-token logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


class TaskError(ValueError):
    """The task asked for does not exist, is not built yet, or does not fit the model's head."""


@dataclass(frozen=True)
class Task:
    name: str                          # Optimum's task name, as `--task` takes it
    auto_model: str                    # the transformers Auto class that loads a model for it
    head_suffixes: tuple[str, ...]     # `architectures` entries ending so carry this task's head
    outputs: Mapping[str, Mapping[int, str]] = field(default_factory=dict)   # ONNX output -> dynamic axes
    runtime_class: str = ""            # embslim.runtime class for its bundles
    pipeline_tag: str = ""             # model-card / transformers pipeline tag
    built: bool = False                # False: declared for --task parsing, refused by `run`
    primary_output: str = "logits"     # the output validation, parity and distillation compare
    has_labels: bool = True            # False: a task learnt from plain text only (no head, no labels)
    # True: the given model is used as it is (nothing to fine-tune without labels); only variants that
    # distil train, from the given model, on the task's text.
    keeps_model: bool = False
    # True: one label per word (entity tags), so outputs are per token and data rows are word lists + tags.
    token_level: bool = False


TASKS: dict[str, Task] = {
    "text-classification": Task(
        "text-classification", "AutoModelForSequenceClassification", ("ForSequenceClassification",),
        outputs={"logits": {0: "batch"}}, runtime_class="Classifier", pipeline_tag="text-classification",
        built=True),
    "feature-extraction": Task(
        "feature-extraction", "AutoModel", ("Model",),
        # last_hidden_state: an Identity alias of token_embeddings, the name Optimum's
        # ORTModelForFeatureExtraction (and so sentence-transformers' ONNX backend) reads.
        outputs={"token_embeddings": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"},
                 "last_hidden_state": {0: "batch", 1: "sequence"}},
        runtime_class="Embedder", pipeline_tag="sentence-similarity", built=True,
        primary_output="sentence_embedding", has_labels=False, keeps_model=True),
    "token-classification": Task(
        "token-classification", "AutoModelForTokenClassification", ("ForTokenClassification",),
        outputs={"logits": {0: "batch", 1: "sequence"}}, runtime_class="Tagger", pipeline_tag="token-classification",
        built=True, token_level=True),
}

# Heads of other tasks that no embslim task takes (a language-model or QA head on top of the encoder).
_OTHER_HEADS = ("ForMaskedLM", "ForQuestionAnswering", "ForMultipleChoice", "ForPreTraining", "ForCausalLM",
                "ForNextSentencePrediction")


def get_task(name: str | None) -> Task:
    """The task named `name` (Optimum's spelling; None: text-classification, for bundles and
    checkpoints written before tasks were recorded); TaskError listing the known ones otherwise."""
    name = name or "text-classification"
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def head_of(architectures: Sequence[str] | None) -> str | None:
    """The task whose head `architectures` (a Hugging Face config's list) carries; None for a bare
    encoder (`BertModel`, no list at all) and "other" for a head no embslim task uses."""
    for arch in architectures or ():
        for task in TASKS.values():
            if task.name != "feature-extraction" and arch.endswith(task.head_suffixes):
                return task.name
        if arch.endswith(_OTHER_HEADS):
            return "other"
    return None


def resolve_task(requested: str | None, config: Any, *, model: str) -> tuple[Task, bool]:
    """The task for a run and whether the model already carries that task's head.

    `requested` None infers the task from `config.architectures`: a model with a classification
    head is text-classification, a token-classification model token-classification; a bare encoder
    (or one with a language-model head) gets a fresh text-classification head, the journey embslim
    started with. Raises TaskError (one line) when the model's head belongs to another task, or the
    task is not built yet. A bare encoder fits feature-extraction only when asked for it."""
    arches = list(getattr(config, "architectures", None) or [])
    head = head_of(arches)
    task = get_task(requested) if requested else get_task(head if head in TASKS else "text-classification")
    if head in TASKS and head != task.name:
        raise TaskError(f"model {model!r} is a {head} model ({', '.join(arches)}) but the run's task is {task.name}; "
                        f"pass --task {head}, or a {task.name} model / a bare encoder")
    if not task.built:
        raise TaskError(f"--task {task.name} is not built yet (embslim builds {', '.join(n for n, t in TASKS.items() if t.built)} bundles); "
                        f"for model {model!r} ({', '.join(arches) or 'no architectures'}) pass --task text-classification "
                        "with a sequence classifier or a bare encoder")
    return task, head == task.name

"""Shared fixtures: tiny random models and tokenizers built in memory (no network), the real data.

`tiny_model_dir` is a saved Hugging Face folder (tiny BERT + a WordPiece tokenizer.json), so the
real loading path (`from_pretrained` on a local folder) is what the tests exercise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

from tiny_models import make_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_task():
    """A small sentiment task (generated, deterministic) whose words the tiny tokenizer knows."""
    from embslim.pipeline.data import synthetic_sentiment, subsample

    task = synthetic_sentiment(n_train=200, n_eval=40, seed=0)
    return type(task)(name=task.name, train=subsample(task.train, 200, seed=0), eval=task.eval,
                      label_names=task.label_names, is_pair=task.is_pair)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real task data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA

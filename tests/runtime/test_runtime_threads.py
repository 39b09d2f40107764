"""One `Classifier` (one ONNX Runtime session) shared by 8 threads gives exactly the
single-thread results: 8 threads x 2,000 predictions on the tiny bundle."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tiny_bundle import make_tiny_bundle

from embslim.runtime import Classifier

THREADS = 8
CALLS_PER_THREAD = 2_000
WORDS = "the a movie film plot acting is was it great good love fun bad awful boring".split()


def _texts(n: int, seed: int) -> list[str]:
    """Texts of 1 to 20 words, so rows are truncated at max_length and batches are padded."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 21))) for _ in range(n)]


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("threads"), max_length=12)
    # threads=2: ORT's own intra-op pool also runs while 8 Python threads share the session.
    return Classifier.from_bundle(bundle, threads=2)


def test_eight_threads_share_one_classifier_and_match_single_thread_results(clf):
    texts = _texts(200, seed=1)
    # Single-thread reference: each text alone (batch 1) and as one padded batch of 4.
    single = {t: clf.predict(t, top_k=2)[0] for t in texts}
    batches = [texts[i : i + 4] for i in range(0, len(texts), 4)]
    batch_ref = [clf.logits(b) for b in batches]

    start = threading.Barrier(THREADS)
    mismatches: list[str] = []
    errors: list[BaseException] = []
    done = [0] * THREADS

    def work(worker: int) -> None:
        try:
            start.wait(timeout=30)
            for call in range(CALLS_PER_THREAD):
                k = (worker * 7919 + call) % len(texts)
                if call % 2:  # alternate batch-1 predictions and padded batches
                    got = clf.predict(texts[k], top_k=2)[0]
                    if got != single[texts[k]]:
                        mismatches.append(f"thread {worker} call {call}: {texts[k]!r} differs")
                else:
                    j = k % len(batches)
                    if not np.array_equal(clf.logits(batches[j]), batch_ref[j]):
                        mismatches.append(f"thread {worker} call {call}: batch {j} differs")
                done[worker] += 1
        except BaseException as e:  # noqa: BLE001 - reported below with the thread's id
            errors.append(e)

    workers = [threading.Thread(target=work, args=(w,)) for w in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a worker thread hung"
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:5]
    assert done == [CALLS_PER_THREAD] * THREADS

"""Give freed memory back to the OS on Linux/glibc (no-ops elsewhere), for the service.

Issue #12 measured 32 parallel requests taking the service to 3.8 GB, never returned. Part
of that is ONNX Runtime's CPU arena, which keeps the largest batch's activations (the
service turns it off: `Classifier.from_bundle(..., memory_arena=False)`); the rest is glibc
keeping freed memory in one malloc arena per thread. Two calls handle that:

- `limit_malloc_arenas(n)`: `mallopt(M_ARENA_MAX, n)`, what `MALLOC_ARENA_MAX=n` does, set
  from inside the process before the request threads start, so every thread shares n arenas;
- `trim()`: `malloc_trim(0)`, which hands the free pages at the top *and inside* every arena
  back to the kernel. The service calls it when it goes idle (`IdleTrimmer`), never on the
  request path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["IdleTrimmer", "limit_malloc_arenas", "trim"]

logger = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _glibc()


def limit_malloc_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at `n` for threads created from now on; False if not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_ARENA_MAX, int(n)))


def trim() -> bool:
    """Return free heap pages to the OS; False when nothing was returned or not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


class IdleTrimmer:
    """A daemon thread that calls `trim()` once the service has been idle for `delay` s.

    `poke()` after each request finishes; `busy()` says whether requests are in flight. A
    burst of requests costs one trim after it, not one per request.
    """

    def __init__(self, busy: Callable[[], bool], *, delay: float = 0.25) -> None:
        self._busy = busy
        self._delay = delay
        self._event = threading.Event()
        self._stopped = False
        self.trims = 0
        self._thread = threading.Thread(target=self._run, name="embslim-trim", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._event.set()

    def stop(self) -> None:
        self._stopped = True
        self._event.set()

    def _run(self) -> None:
        while True:
            self._event.wait()
            if self._stopped:
                return
            self._event.clear()
            time.sleep(self._delay)
            if self._stopped:
                return
            if self._busy():
                continue  # the request that is still running pokes again when it ends
            started = time.perf_counter()
            trim()
            self.trims += 1
            logger.debug("malloc_trim in %.1f ms", (time.perf_counter() - started) * 1000)

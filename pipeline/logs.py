"""Log set-up for the `embslim` command and progress for the long loops (eval batches, artifacts).

By default only embslim's own INFO lines and everyone's warnings are shown: ONNX Runtime's
quantizer alone logs hundreds of INFO lines per run, some of them through the root logger
(`logging.info(...)`), and its transformer optimizer logs under bare module names (`fusion_base`,
`onnx_model_bert`). So the root logger sits at WARNING and the `embslim` logger at INFO; every
library logger that sets no level of its own inherits WARNING. `-v` brings the libraries' INFO
back (embslim then logs DEBUG), `-vv` shows DEBUG from everyone.

`progress` wraps a loop: a tqdm bar on a terminal; in a log file (stderr not a terminal) one log
line at most every `every` seconds, so a captured log shows a long stage moving without
filling up with carriage returns.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that set up their own handler (propagate=False), so the root level does not reach
# them; -v raises them to INFO too. transformers and optimum both log this way.
_OWN_HANDLER_LIBRARIES = ("transformers", "optimum")


def setup_logging(verbosity: int = 0) -> None:
    """0: embslim INFO + everyone's warnings; 1 (-v): everyone's INFO, embslim DEBUG; 2+: all DEBUG;
    -1 (a launcher's rank other than 0): warnings only.

    Adds a stderr handler only when the root logger has none (like logging.basicConfig), so
    a host application's or pytest's handlers are kept; levels are (re)set on every call."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG)
    logging.getLogger("embslim").setLevel(logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0
                                          else logging.DEBUG)
    for name in _OWN_HANDLER_LIBRARIES:
        if name in sys.modules or verbosity:   # importing transformers just to quiet it would cost seconds
            logging.getLogger(name).setLevel(logging.WARNING if verbosity <= 0 else root.level)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):   # replaced or closed stderr (pytest capture, daemons)
        return False


def progress(items: Iterable[T], *, total: int, desc: str, unit: str = "batch", every: float = 10.0,
             logger: logging.Logger | None = None) -> Iterator[T]:
    """Yield `items`, showing how far the loop is: a tqdm bar on a terminal, else a log line
    ("desc: 120/872 batch (14%)") at most every `every` seconds and one at the end if any was shown.
    Nothing is shown when the logger would not print INFO."""
    logger = logger or log
    if not logger.isEnabledFor(logging.INFO):
        yield from items
        return
    if _is_terminal():
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    shown = False
    done = 0
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every and done < total:
            logger.info("%s: %d/%d %s (%d%%, %.0f s)", desc, done, total, unit, 100 * done // max(total, 1), now - start)
            last, shown = now, True
    if shown:
        logger.info("%s: %d/%d %s done in %.0f s", desc, done, total, unit, time.monotonic() - start)

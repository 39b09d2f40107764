"""The threaded HTTP server both the service and the web app's file server use (stdlib only)."""

from __future__ import annotations

import logging
import sys
from http.server import ThreadingHTTPServer
from typing import Any

__all__ = ["QuietThreadingHTTPServer"]

logger = logging.getLogger(__name__)


class QuietThreadingHTTPServer(ThreadingHTTPServer):
    """A thread per connection; a client that hangs up mid-answer is logged, not printed."""

    daemon_threads = True
    # The listen backlog; it must be a class attribute, as the socket listens in __init__.
    # Bursts of new connections then wait in the queue instead of being refused.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            logger.debug("client %s went away: %s", client_address, error)
        else:
            logger.exception("error while serving %s", client_address)

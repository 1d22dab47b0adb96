"""Fault-injection points for crash tests (kill -9 at a known step). Inert unless asked.

``EDGELOOP_FAULT=pause:<point>`` makes the process print a marker and sleep at ``<point>``,
so a test can kill it there and check that nothing is left half-done.
"""

from __future__ import annotations

import os
import sys
import time


def point(name: str) -> None:
    """Pause here if ``EDGELOOP_FAULT`` names this point."""
    if os.environ.get("EDGELOOP_FAULT", "") == f"pause:{name}":
        sys.stdout.write(f"EDGELOOP_FAULT: paused at {name}\n")
        sys.stdout.flush()
        time.sleep(600)

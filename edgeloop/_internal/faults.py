"""Fault-injection points for crash tests (kill -9 at a known step). Inert unless asked.

``EDGELOOP_FAULT=pause:<point>`` makes the process print a marker and sleep at ``<point>``,
so a test can kill it there and check that nothing is left half-done.
``EDGELOOP_FAULT=hold:<point>`` prints the marker and waits until the file named by
``EDGELOOP_FAULT_RELEASE`` exists, then goes on: a test can break something (stop the Prefect
server) while the run is in the middle of its work.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def point(name: str) -> None:
    """Pause (or hold until released) here if ``EDGELOOP_FAULT`` names this point."""
    fault = os.environ.get("EDGELOOP_FAULT", "")
    if fault not in (f"pause:{name}", f"hold:{name}"):
        return
    sys.stdout.write(f"EDGELOOP_FAULT: paused at {name}\n")
    sys.stdout.flush()
    if fault.startswith("pause:"):
        time.sleep(600)
        return
    release = Path(os.environ.get("EDGELOOP_FAULT_RELEASE", "/nonexistent"))
    deadline = time.monotonic() + 600
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.2)

"""A local Ray instance with only the processes a local sweep uses.

``ray.init`` starts, beside the GCS and the raylet, three Python processes a local sweep does not need, and
waits for one of them:

- the dashboard head (``include_dashboard=False`` leaves out its web UI, not the process): it serves job
  submission and the state API. ``ray.init`` waits until it is up, ≈ 1 s of a 2-core machine's start-up
  (``bench.ray_start``). Nobody submits jobs to a sweep's own instance; Ray Train's controller looks actors up
  through the state API, so a sweep with data-parallel trials keeps it.
- the autoscaler's monitor: a local instance never grows; stopping it costs ≈ 1 s of ``ray.shutdown``.
- the log monitor: it streams workers' output to the driver, which prints it only with ``--verbose``.

``ray.init`` has no argument for them (``ray start`` has ``--no-monitor`` and ``--include-log-monitor``), so
``lean`` sets them on the node parameters ``ray.init`` builds, and skips the head's start, within its block.
The default; ``RAYCLF_LEAN_RAY=0`` starts Ray's default processes (start Ray yourself with ``ray start --head``
and pass ``--address`` for a dashboard or ``ray job submit``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any


def enabled() -> bool:
    return os.environ.get("RAYCLF_LEAN_RAY", "1") != "0"


@contextmanager
def lean(monitor: bool = False, log_monitor: bool = False, api_server: bool = False) -> Iterator[None]:
    """Within the block, a ``ray.init`` that starts a local instance starts the autoscaler's monitor, the log
    monitor and the dashboard head only if asked. Ray's node internals are private: a Ray without them gets its
    default processes."""
    with ExitStack() as stack:
        if not (monitor and log_monitor):
            stack.enter_context(_params(monitor, log_monitor))
        if not api_server:
            stack.enter_context(_no_api_server())
        yield


@contextmanager
def _params(monitor: bool, log_monitor: bool) -> Iterator[None]:
    try:
        from ray._private import parameter
    except ImportError:  # a later Ray moved them: start what it starts
        yield
        return
    original = getattr(parameter, "RayParams", None)
    if original is None:
        yield
        return

    class LeanParams(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("no_monitor", not monitor)
            kwargs.setdefault("include_log_monitor", log_monitor)
            super().__init__(*args, **kwargs)

    parameter.RayParams = LeanParams
    try:
        yield
    finally:
        parameter.RayParams = original


@contextmanager
def _no_api_server() -> Iterator[None]:
    try:
        from ray._private.node import Node
    except ImportError:
        yield
        return
    original = getattr(Node, "start_api_server", None)
    if original is None:
        yield
        return

    def skip(self: Any, **kwargs: Any) -> None:  # the head node's dashboard head: not started
        return None

    Node.start_api_server = skip
    try:
        yield
    finally:
        Node.start_api_server = original

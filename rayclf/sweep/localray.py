"""A local Ray instance with only the processes a local sweep uses.

``ray.init`` starts, beside the GCS and the raylet, an autoscaler monitor and a log monitor (each a Python
process importing Ray: about a second of a 2-core machine's CPU while the driver is starting Tune). A local
instance never scales, and rayclf's driver does not print its workers' output unless ``--verbose``, so neither
is needed there; ``ray.init`` has no argument for them (``ray start`` has: ``--no-monitor``,
``--include-log-monitor``), so ``lean`` sets them on the parameters ``ray.init`` builds.

Opt-in (``RAYCLF_LEAN_RAY=1``): ``bench.ray_start`` measured 2.1 s less for ``ray.init`` + a first task +
``ray.shutdown`` on 2 cores, but on the 8-trial yardstick three of four lean runs started their first trial 6–8 s
late (main's default instance did too, in 3 of 6 runs: BENCHMARKS.md, issue 33); until that is understood, a
sweep starts Ray's default processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def enabled() -> bool:
    return os.environ.get("RAYCLF_LEAN_RAY", "0") == "1"


@contextmanager
def lean(monitor: bool = False, log_monitor: bool = False) -> Iterator[None]:
    """Within the block, a ``ray.init`` that starts a local instance starts the autoscaler's monitor and the log
    monitor only if asked. Ray's parameters are private: a Ray without them gets its default processes."""
    try:
        from ray._private import parameter
    except ImportError:  # a later Ray moved them: start what it starts
        yield
        return
    original = getattr(parameter, "RayParams", None)
    if original is None or (monitor and log_monitor):
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

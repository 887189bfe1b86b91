"""A warm start on a local Ray instance: trial processes import torch and rayclf while Ray and Tune set up.

When the first driver connects, the raylet pre-starts idle Python workers (one per CPU). Two things keep Tune's
trials from using them, so every slot's first trial starts a fresh process and imports torch, Ray Tune and
rayclf's engine (≈ 4 s of a 2-core machine) only once the trial is due:

- Tune creates its trial actors with a ``runtime_env`` of environment variables it copies from the driver
  (``ray.tune.execution.class_cache``), and a worker is only reused for an actor whose runtime env matches the
  worker's (pre-started workers have none). On an instance this driver starts, every worker inherits the
  driver's environment anyway (rayclf sets its variables before ``ray.init``), so the copy adds nothing; without
  it the trial actors take the pre-started workers.
- Those workers import only Ray. Ray's ``preload_python_modules`` setting makes every worker the raylet starts
  import the modules a trial needs first, before it waits for work: the pre-started ones do it while the driver
  starts Tune.

Torch sizes its thread pool (all cores) when it is imported, and a trial process imports it before Ray sets the
trial's ``OMP_NUM_THREADS`` (its CPUs): preloaded, or, without the warm start, when the trial first runs
(its engine imports torch). ``fit_threads`` sizes the pool again when the trial starts; without it
two 1-CPU trials on 2 cores ran 2 threads each (measured on main: 2 threads with ``OMP_NUM_THREADS=1``), and the
yardstick's trials took about 4× their seconds.

Neither applies to a cluster (``--address`` or ``RAY_ADDRESS``): its workers do not inherit this driver's
environment, and its raylets' settings are the cluster's.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# what a single-worker trial imports before its first step (not timm: only timm models and timm's own
# optimizers need it, and they import it themselves; torch._dynamo: torch imports it when the first optimizer is
# built); a module that fails to import is skipped by Ray and imported again by the trial
PRELOAD = ("torch", "torch._dynamo", "ray.tune", "rayclf.sweep.worker", "rayclf.train.engine",
           "rayclf.data.sources", "rayclf.models.families")

_TUNE_ENV: tuple[dict[str, str], set[str]] | None = None  # class_cache's own values, before any change


def enabled() -> bool:
    return os.environ.get("RAYCLF_WARM_START", "1") != "0"  # 0: measure without it


def starts_local_instance(address: str | None) -> bool:
    """Whether ``ray.init`` will start a new local instance (rather than connect to a cluster or use the
    instance this process already runs)."""
    import ray

    return local_address(address) and not ray.is_initialized()


def local_address(address: str | None) -> bool:
    """Whether ``address`` (else ``RAY_ADDRESS``) asks for a local instance: none, or Ray's ``local``."""
    return (address or os.environ.get("RAY_ADDRESS") or "local") == "local"


def share_idle_workers(local: bool) -> None:
    """Let Tune's trial actors take Ray's pre-started idle workers (``local``: an instance this driver starts),
    or restore Tune's copying of the driver's environment into every trial actor (a cluster)."""
    from ray.tune.execution import class_cache

    global _TUNE_ENV
    if _TUNE_ENV is None:
        _TUNE_ENV = dict(class_cache.DEFAULT_ENV_VARS), set(class_cache.ENV_VARS_TO_PROPAGATE)
    class_cache.DEFAULT_ENV_VARS.clear()
    class_cache.ENV_VARS_TO_PROPAGATE.clear()
    if not (local and enabled()):
        class_cache.DEFAULT_ENV_VARS.update(_TUNE_ENV[0])
        class_cache.ENV_VARS_TO_PROPAGATE.update(_TUNE_ENV[1])


def init_options() -> dict[str, Any]:
    """Extra ``ray.init`` arguments for a local instance: every worker imports what a trial needs first."""
    if not enabled() or not local_address(None):  # ray.init connects to that cluster
        return {}
    return {"_system_config": {"preload_python_modules": list(PRELOAD)}}


def fit_threads() -> None:
    """Size torch's thread pool to the CPUs Ray gave this trial (``OMP_NUM_THREADS``, set when the trial's task
    starts): torch reads the variable only on import, and the trial's process imported it before."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if "torch" in sys.modules and threads.isdigit() and int(threads) > 0:
        import torch

        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))

"""The warm start's pieces, without starting Ray: which instance gets it, and Tune's environment copy restored."""

from __future__ import annotations

import pytest

from rayclf.sweep import warm


@pytest.fixture
def tune_env(monkeypatch):
    from ray.tune.execution import class_cache

    monkeypatch.setattr(warm, "_TUNE_ENV", None)  # what an earlier sweep in this process captured: not this test's

    saved = dict(class_cache.DEFAULT_ENV_VARS), set(class_cache.ENV_VARS_TO_PROPAGATE)
    yield class_cache
    class_cache.DEFAULT_ENV_VARS.clear()
    class_cache.DEFAULT_ENV_VARS.update(saved[0])
    class_cache.ENV_VARS_TO_PROPAGATE.clear()
    class_cache.ENV_VARS_TO_PROPAGATE.update(saved[1])


def test_local_instance_shares_idle_workers_and_a_cluster_keeps_tunes_environment(tune_env, monkeypatch):
    monkeypatch.delenv("RAYCLF_WARM_START", raising=False)
    before = dict(tune_env.DEFAULT_ENV_VARS), set(tune_env.ENV_VARS_TO_PROPAGATE)
    assert before[1], "Tune copies some variables into its trial actors"
    warm.share_idle_workers(local=True)  # no runtime env on the trial actors: they take pre-started workers
    assert not tune_env.DEFAULT_ENV_VARS and not tune_env.ENV_VARS_TO_PROPAGATE
    warm.share_idle_workers(local=False)  # a cluster's workers do not inherit the driver's environment
    assert (dict(tune_env.DEFAULT_ENV_VARS), set(tune_env.ENV_VARS_TO_PROPAGATE)) == before
    monkeypatch.setenv("RAYCLF_WARM_START", "0")
    warm.share_idle_workers(local=True)
    assert (dict(tune_env.DEFAULT_ENV_VARS), set(tune_env.ENV_VARS_TO_PROPAGATE)) == before


def test_credentials_stay_out_after_a_local_run(tune_env, monkeypatch):
    from rayclf.sweep.runner import SECRET_ENV_VARS, _keep_credentials_out_of_ray

    warm.share_idle_workers(local=True)
    warm.share_idle_workers(local=False)
    _keep_credentials_out_of_ray()  # _start_ray's order: the restore first, then the credentials out
    assert not set(SECRET_ENV_VARS) & tune_env.ENV_VARS_TO_PROPAGATE


def test_preload_only_for_an_instance_this_driver_starts(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whatever other tests of this session started
    monkeypatch.delenv("RAYCLF_WARM_START", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert warm.init_options()["_system_config"]["preload_python_modules"] == list(warm.PRELOAD)
    assert warm.starts_local_instance(None) and not warm.starts_local_instance("ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")  # ray.init connects: no _system_config allowed there
    assert warm.init_options() == {} and not warm.starts_local_instance(None)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("RAYCLF_WARM_START", "0")
    assert warm.init_options() == {}


def test_preloaded_modules_exist():
    import importlib.util

    assert all(importlib.util.find_spec(m) is not None for m in warm.PRELOAD)


def test_fit_threads_sizes_a_preloaded_torch_to_the_trials_cpus(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        warm.fit_threads()
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "")  # unset or odd: leave torch alone
        torch.set_num_threads(2)
        warm.fit_threads()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("verbose", "lean", "ddp", "monitor", "log_monitor", "api_server"), [
    (False, None, False, False, False, False),  # the default: no autoscaler, nobody reads the workers' output,
    (False, "1", False, False, False, False),   # no job server or state API anybody asks
    (True, "1", False, False, True, False),  # --verbose prints the workers' output: the log monitor carries it
    (False, None, True, False, False, True),  # Ray Train's controller looks actors up through the state API
    (False, "0", False, True, True, True),  # RAYCLF_LEAN_RAY=0: every process Ray's default starts
])
def test_a_local_instance_starts_without_the_processes_a_local_sweep_does_not_use(
        tune_env, monkeypatch, verbose, lean, ddp, monitor, log_monitor, api_server):
    """``ray.init`` builds its node's parameters and starts the head's processes inside ``_start_ray``: the
    autoscaler's monitor, the log monitor and the dashboard head are left out there unless the sweep needs them,
    and Ray's own defaults are back once the instance is up. Checked on what ``ray.init`` would do: the node
    parameters it builds, and whether the head node's ``start_api_server`` runs."""
    import ray
    from ray._private import parameter
    from ray._private.node import Node

    from rayclf.sweep import runner

    built: list[parameter.RayParams] = []
    heads: list[bool] = []
    original = Node.start_api_server
    monkeypatch.setattr(Node, "start_api_server", lambda self, **kw: heads.append(True))

    def init(**kwargs):
        assert kwargs["address"] == "local"  # never joins a `ray start` instance it happens to find
        built.append(parameter.RayParams(num_cpus=kwargs["num_cpus"]))
        Node.start_api_server(object.__new__(Node), include_dashboard=False, raise_on_failure=False)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if lean is None:
        monkeypatch.delenv("RAYCLF_LEAN_RAY", raising=False)
    else:
        monkeypatch.setenv("RAYCLF_LEAN_RAY", lean)
    assert runner._start_ray(None, 2, verbose=verbose, data_parallel=ddp)
    (params,) = built
    assert (not params.no_monitor, params.include_log_monitor is not False) == (monitor, log_monitor)
    assert bool(heads) == api_server
    after = parameter.RayParams()
    assert Node.start_api_server is not original  # (the test's own stand-in is back, not rayclf's skip)
    Node.start_api_server(object.__new__(Node), include_dashboard=False, raise_on_failure=False)
    assert heads  # outside the block the head starts again
    assert after.no_monitor is False and after.include_log_monitor is None  # Ray's defaults outside

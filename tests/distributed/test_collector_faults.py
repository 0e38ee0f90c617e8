"""Collector faults: a stopped or killed learner leaves no process or shared memory behind, a
failing collector is restarted then reported with its traceback, bad messages and bad settings
are clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import collector_helpers as C
import numpy as np
import pytest
from test_collectors import DEADLINE_S, _ns

from worldflux.core.exceptions import ConfigError
from worldflux.distributed.collectors import CollectorConfig, CollectorError, CollectorPool


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_stopping_the_learner_cleans_everything(sig: int) -> None:
    """Ctrl-C: the learner cleans up. SIGKILL: the orphaned collectors clean up after themselves."""
    ns = _ns()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    env["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.Popen(
        [sys.executable, C.__file__, ns, "fork"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the first chunk arrived
        assert line.strip() == "collecting", proc.stderr.read() if proc.stderr else ""
        assert C.shm_entries(ns)
        proc.send_signal(sig)
        # communicate, not wait: it drains stderr (a full pipe would block the learner), and
        # close() alone may take ~20 s by design (10 s for collectors to stop, then kill + join)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints where every thread is
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the learner did not exit after {sig!r}:\n{err[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, err  # KeyboardInterrupt propagates after cleanup
    deadline = time.monotonic() + 15
    while C.shm_entries(ns) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert C.shm_entries(ns) == []


def test_a_collector_that_keeps_failing_raises_with_its_traceback() -> None:
    ns = _ns()
    cfg = CollectorConfig(num_collectors=1, start_method="fork", namespace=ns, max_restarts=1)
    with CollectorPool(C.broken_env, C.random_policy_fn(), cfg) as pool:
        deadline = time.monotonic() + DEADLINE_S
        with pytest.raises(CollectorError, match="simulated simulator crash"):
            while time.monotonic() < deadline:
                pool.poll(0.5)
    assert C.shm_entries(ns) == []


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (C.failing_env, "failing_env: simulated start-up failure"),
        (C.EnvFactoryLostInChild(), "EnvFactoryLostInChild: cannot be rebuilt"),
    ],
    ids=["env-factory-raises", "factory-fails-to-unpickle"],
)
def test_a_collector_that_dies_while_starting_reports_its_traceback(factory, message) -> None:  # noqa: ANN001
    ns = _ns()
    cfg = CollectorConfig(num_collectors=1, start_method="spawn", namespace=ns, max_restarts=0)
    with CollectorPool(factory, C.random_policy_fn(), cfg) as pool:
        deadline = time.monotonic() + DEADLINE_S
        with pytest.raises(CollectorError) as info:
            while time.monotonic() < deadline:
                pool.poll(0.5)
    text = str(info.value)
    assert "exited with code 1 while starting" in text, text
    assert "Traceback (most recent call last)" in text and message in text, text
    assert C.shm_entries(ns) == []


def test_bad_messages_are_refused() -> None:
    from multiprocessing import Pipe

    from worldflux.core.exceptions import StateFormatError
    from worldflux.distributed import transport

    a, b = Pipe()
    a.send_bytes(b"\x80not json")
    with pytest.raises(StateFormatError, match="expected JSON"):
        transport.recv(b)
    receiver = transport.ChunkReceiver(a, 0, 0, np.arange(1), 2, "wfx")
    with pytest.raises(StateFormatError, match="seq 3 arrived, expected 0"):
        receiver.receive({"type": "chunk", "seq": 3, "slot": 0, "desc": {}}, copy=True)
    with pytest.raises(StateFormatError, match="slot"):
        receiver.receive({"type": "chunk", "seq": 0, "slot": 7, "desc": {}}, copy=True)
    with pytest.raises(StateFormatError, match="'desc' must be dict"):
        receiver.receive({"type": "chunk", "seq": 0, "slot": 0, "desc": "x"}, copy=True)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="num_collectors"):
        CollectorConfig(num_collectors=0)
    with pytest.raises(ConfigError, match="start_method"):
        CollectorConfig(start_method="threads")
    for bad in ("bad/name", "bad name", "_leading", "x" * 41):
        with pytest.raises(ConfigError, match="namespace"):
            CollectorConfig(namespace=bad)
    assert CollectorConfig(namespace="my_state.v2").namespace == "my_state.v2"  # as State's rule
    with pytest.raises(ConfigError, match="weight_slots"):
        CollectorConfig(weight_slots=1)

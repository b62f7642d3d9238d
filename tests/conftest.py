"""Fixtures shared by the test modules."""

from __future__ import annotations

import jax
import pytest


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

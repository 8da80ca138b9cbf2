"""Shared fixtures. Shapes stay small: JAX compilation is the cost of this suite (the
compiler settings are in the root conftest.py)."""

import jax
import pytest


@pytest.fixture
def key():
    return jax.random.key(0)

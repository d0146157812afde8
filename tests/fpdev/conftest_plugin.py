"""Pytest fixtures for the fpdev test backend. Wire in with ``pytest_plugins`` in tests/conftest.py.

Nothing here skips: if the C++ build fails, every test that asked for the backend errors with
the compiler's output.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from tests.fpdev import build_fpdev, load_fpdev


@pytest.fixture(scope="session")
def fpdev() -> types.ModuleType:
    """The backend loaded into this process, named ``fpdev``.

    Its fallback mode is whatever FPDEV_ENABLE_FALLBACK was when it was first loaded here
    (``fpdev.fallback_enabled()`` says which); tests needing a given mode use
    ``tests.fpdev.run_in_subprocess`` instead.
    """
    return load_fpdev()


@pytest.fixture(scope="session")
def fpdev_build() -> Path:
    """The backend compiled (in a child process), not loaded here: for subprocess-only tests."""
    return build_fpdev()

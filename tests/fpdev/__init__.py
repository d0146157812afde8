"""fpdev: a real PrivateUse1 backend with MPS's fallback mechanics, for testing the live probe.

There is no Mac here. ``fpdev.cpp`` registers a C++ backend that falls back to the CPU the way
``aten/src/ATen/mps/MPSFallback.mm`` does (see /work/shared/mps-facts.md §1-3, §10), so the
live collector can be exercised against the real dispatcher, ``cpu_fallback``,
``TORCH_WARN_ONCE`` and profiler.

The fallback mode is read from ``FPDEV_ENABLE_FALLBACK`` once, when the library is loaded:
code that needs a given mode runs in a fresh process (:func:`run_in_subprocess`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

ENV_VAR = "FPDEV_ENABLE_FALLBACK"
DEVICE = "fpdev"
EXTENSION_NAME = "fpdev_ext"

# Ops with an fpdev kernel that never goes through at::_to_cpu. The first nine are what any
# device needs; the rest make a small MLP's forward pass (linear -> t + addmm, relu) native.
NATIVE_OPS: tuple[str, ...] = (
    "aten::empty.memory_format",
    "aten::empty_strided",
    "aten::_copy_from",
    "aten::_copy_from_and_resize",
    "aten::resize_",
    "aten::as_strided",
    "aten::_reshape_alias",
    "aten::view",
    "aten::_local_scalar_dense",
    "aten::add.Tensor",
    "aten::add.out",
    "aten::add_.Tensor",
    "aten::mul.Tensor",
    "aten::mul_.Tensor",
    "aten::relu",
    "aten::mm",
    "aten::addmm",
    "aten::fill_.Scalar",
    "aten::zero_",
    "aten::nonzero",  # warns and runs on the CPU itself, like MPS's before macOS 13.0
)

# Ops registered straight to the CPU fallback, so they fall back even with ENV_VAR unset, as
# MPS's explicit registrations do. linalg_svd is CompositeImplicitAutograd: the whole call goes
# to the CPU before it can decompose, as on MPS up to 2.13.
EXPLICIT_FALLBACK_OPS: tuple[str, ...] = (
    "aten::linalg_svd",
    "aten::linalg_svd.U",
    "aten::col2im",
    "aten::embedding_renorm_",
)

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE = PACKAGE_DIR / "fpdev.cpp"
REPO_ROOT = PACKAGE_DIR.parents[1]
BUILD_DIR = REPO_ROOT / "tests" / ".build"

SUBPROCESS_TIMEOUT = 120.0
BUILD_TIMEOUT = 900.0
# A build takes well under a minute; a lock file this old was left by a killed build, and
# cpp_extension would otherwise wait on it forever.
STALE_LOCK_SECONDS = 600.0

_lock = threading.Lock()
_extension: types.ModuleType | None = None
_hooks: object | None = None  # kept alive: the dispatcher holds on to the hooks object
release_plan: object | None = None  # tests.fpdev.release.ReleasePlan when FPDEV_RELEASE is set


def load_fpdev() -> types.ModuleType:
    """Build (once, cached in tests/.build) and load the backend, then name it ``fpdev``.

    Idempotent within a process. Concurrent processes are serialised by cpp_extension's lock
    file in the build directory: one compiles, the others wait and then load the result.

    With ``FPDEV_RELEASE`` set (``2.8.0`` or an operator-list path), the backend is fpdev as
    that release: its kernels are registered here, before any op runs (tests/fpdev/release.py).
    """
    global _extension, _hooks, release_plan
    with _lock:
        if _extension is not None:
            return _extension
        import torch
        from torch.utils import cpp_extension

        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        _clear_stale_lock()
        extension = cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(SOURCE)],
            build_directory=str(BUILD_DIR),
            extra_cflags=["-O1"],
            verbose=False,
        )
        if torch._C._get_privateuse1_backend_name() != DEVICE:
            torch.utils.rename_privateuse1_backend(DEVICE)
        torch.utils.generate_methods_for_privateuse1_backend()
        torch._register_device_module(DEVICE, _device_module())
        _hooks = _make_hooks(torch)
        torch._C._acc.register_python_privateuseone_hook(_hooks)
        if extension.release_at_load():
            from tests.fpdev.release import configure

            release_plan = configure(extension, extension.release_at_load())
        _extension = extension
        return extension


def build_fpdev() -> Path:
    """Compile the backend in a child process, so this process does not load it.

    Returns the build directory. Raises RuntimeError with the compiler output on failure.
    """
    done = run_in_subprocess(
        "from tests.fpdev import load_fpdev; load_fpdev()", env={}, timeout=BUILD_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the fpdev backend failed:\n{done.stdout}\n{done.stderr}")
    return BUILD_DIR


def run_in_subprocess(
    code: str, env: dict[str, str] | None = None, timeout: float = SUBPROCESS_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with ``sys.executable -c`` from the repository root, ``tests.fpdev`` importable.

    ``env`` is applied over this process's environment, from which ``FPDEV_ENABLE_FALLBACK`` and
    ``FPDEV_RELEASE`` are removed first, so the child's mode is exactly what the caller asked for.
    """
    child_env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "FPDEV_RELEASE")}
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [child_env.get("PYTHONPATH")])]
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _clear_stale_lock() -> None:
    lock = BUILD_DIR / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_SECONDS:
        lock.unlink(missing_ok=True)


def _device_module() -> types.ModuleType:
    """``torch.fpdev``: the calls torch makes on a PrivateUse1 backend's module."""
    import torch

    module = types.ModuleType(f"torch.{DEVICE}")
    module.is_available = lambda: True  # type: ignore[attr-defined]
    module.is_initialized = lambda: True  # type: ignore[attr-defined]
    module.device_count = lambda: 1  # type: ignore[attr-defined]
    module.current_device = lambda: 0  # type: ignore[attr-defined]
    module.synchronize = lambda device=None: None  # type: ignore[attr-defined]
    module._is_in_bad_fork = lambda: False  # type: ignore[attr-defined]
    # fpdev has no generator of its own: random ops fall back and use the CPU generator.
    module.manual_seed = lambda seed: None  # type: ignore[attr-defined]
    module.manual_seed_all = lambda seed: None  # type: ignore[attr-defined]
    # fork_rng (used by torch.testing's random samples) saves and restores these.
    module.get_rng_state = lambda device=None: torch.get_rng_state()  # type: ignore[attr-defined]
    module.set_rng_state = lambda state, device=None: None  # type: ignore[attr-defined]
    return module


def _make_hooks(torch: types.ModuleType) -> object:
    """PrivateUse1 hooks: the autograd engine asks them before using the device's thread."""

    class Hooks(torch._C._acc.PrivateUse1Hooks):  # type: ignore[name-defined, misc]
        def is_available(self) -> bool:
            return True

        def is_built(self) -> bool:
            return True

        def has_primary_context(self, device_index: int) -> bool:
            return True

    return Hooks()

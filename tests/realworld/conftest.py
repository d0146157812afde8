"""Runs of the real-client scripts, shared by every test (and xdist worker) that reads them.

Each script runs twice, each time in a fresh process: plain (``python script.py``, which takes
its CPU path here) and under the probe (``_runner.py``). A run is made once per session: the
first worker that needs it runs it under a file lock, the others read its files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock  # a torch dependency, so always installed

HERE = Path(__file__).parent
SCRIPTS = HERE / "scripts"
LIBRARIES = ("transformers", "diffusers")
# .ci/run sets this: there a missing library is an install bug, not a reason to skip.
REQUIRE_ENV = "FALLBACK_PROBE_REQUIRE_REALWORLD"
TIMEOUT = 300


@dataclass(frozen=True)
class Run:
    plain_stdout: str
    probe_stdout: str
    probe_stderr: str
    error: str | None  # the script's traceback under the probe, None if it finished
    all: dict[str, Any]  # the --torch-version all report
    releases: dict[str, dict[str, Any]]  # release -> report of the same trace


def _check_libraries() -> None:
    missing = [name for name in LIBRARIES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    message = (
        f"{', '.join(missing)} not installed: pip install the 'realworld' extra (docs/realworld.md)"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


# No hub access here (the libraries must not try). One hash seed and one CPU thread for plain
# and probed runs alike: MKL and OpenMP pick their thread count by load, which changes
# reduction order and the 5th digit of a loss (seen once on a loaded machine, not the probe).
DETERMINISTIC = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def child_env() -> dict[str, str]:
    env = {**os.environ, **DETERMINISTIC}
    env.pop("PYTORCH_ENABLE_MPS_FALLBACK", None)
    return env


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=TIMEOUT,
        cwd=HERE.parents[1],
    )


def _make_run(script: Path, folder: Path) -> Run:
    plain = _python(str(script))
    if plain.returncode != 0:  # the script itself must work without the probe
        raise AssertionError(f"plain run of {script.name} failed:\n{plain.stderr[-3000:]}")
    out = folder / f"{script.stem}.json"
    probed = _python(str(HERE / "_runner.py"), str(script), str(out))
    if probed.returncode != 0 or not out.exists():
        raise AssertionError(f"the runner itself failed on {script.name}:\n{probed.stderr[-3000:]}")
    saved = json.loads(out.read_text(encoding="utf-8"))
    return Run(
        plain.stdout,
        probed.stdout,
        probed.stderr,
        saved["error"],
        saved["all"],
        saved["releases"],
    )


@pytest.fixture(scope="session")
def realworld_runs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``realworld_runs(name)`` -> ``Run`` of ``scripts/<name>.py``, made once per session."""
    _check_libraries()
    # The parent of the per-worker base temp is shared by all xdist workers of this session.
    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    folder = shared / "realworld-runs"
    folder.mkdir(exist_ok=True)
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            script = SCRIPTS / f"{name}.py"
            done = folder / f"{name}.run.json"
            with FileLock(str(folder / f"{name}.lock")):
                if not done.exists():
                    try:
                        saved = _make_run(script, folder).__dict__
                    except (AssertionError, subprocess.TimeoutExpired) as exc:
                        saved = {"failure": str(exc)}  # once, not again in every test
                    done.write_text(json.dumps(saved), encoding="utf-8")
            saved = json.loads(done.read_text(encoding="utf-8"))
            if "failure" in saved:
                raise AssertionError(saved["failure"])
            cache[name] = Run(**saved)
        return cache[name]

    return get

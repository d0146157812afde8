"""Charging every op of a pytest session to whoever ran it: a test, or shared setup.

The plugin keeps one emulated ``mps`` device for the whole session (a suite chooses its device
at import time, builds models in fixtures), so ops happen outside the test functions too. A
:class:`Recording` holds a stack of :class:`Owner` objects: the owner on top is charged with
the ops of the moment. Only one probe is open at a time, on the top owner: pushing an owner
closes the probe of the one below it and popping opens a new one, so nested setup (a
module-scoped fixture created while a test sets up) is charged to the fixture, not the test.
Each closed probe's report is folded into its owner at once, so no trace outlives its phase.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fallback_probe.baseline import MAX_WHERE, RANK
from fallback_probe.records import Verdict

if TYPE_CHECKING:
    import pytest

    from fallback_probe.api import Probe
    from fallback_probe.collect.emulate import Emulation
    from fallback_probe.report import Report

FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"
# Ops run while conftest.py files load, in session hooks and in collection outside a test
# module's import: no test or fixture asked for them.
OUTSIDE_TESTS = "(outside tests: conftest.py files, plugins, collection)"
# pytest's own names for the fixtures that run xunit and unittest class/module setup.
_SETUP_FIXTURES = {
    "_unittest_setUpClass_fixture_": "setUpClass",
    "_xunit_setup_class_fixture_": "setup_class",
    "_xunit_setup_module_fixture_": "setup_module",
}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class Owner:
    """Whoever ops are charged to, and what its closed probes saw, folded together.

    ``key`` is its baseline key (a test's node id, or a label for shared setup); ``rerun`` is
    the pytest argument that runs it again (``None``: the whole suite); ``record=False``
    (``no_fallback_probe``) opens no probe, so its ops are not recorded at all.
    """

    def __init__(
        self, key: str, allow: Iterable[str] = (), rerun: str | None = None, record: bool = True
    ) -> None:
        self.key = key
        self.allow = tuple(allow)
        self.rerun = rerun
        self.record = record
        self.error: str | None = None
        self.target: dict[str, str | None] | None = None
        self.complete = True
        self.judged = False  # some op ran on the device
        self.cpu_work = False  # some torch op ran elsewhere
        self.found: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def add(self, rep: Report, fallback_env: str = FALLBACK_ENV) -> None:
        self.target = {"torch": rep.target.torch, "macos": rep.target.macos}
        self.target["mode"] = rep.mode.value
        self.complete = self.complete and rep.complete
        self.judged = self.judged or bool(rep.ops)
        self.cpu_work = self.cpu_work or bool(rep.cpu_work)
        for row in rep.rows(Verdict.UNSUPPORTED, Verdict.FALLBACK):
            entry = self.found.setdefault(
                row.op, {"verdict": row.verdict.value, "modules": [], "sources": []}
            )
            if RANK[row.verdict.value] < RANK[entry["verdict"]]:
                entry["verdict"] = row.verdict.value
            for key, values in (("modules", row.modules), ("sources", row.sources)):
                for v in values:
                    if v not in entry[key] and len(entry[key]) < MAX_WHERE:
                        entry[key].append(v)
        if rep.mode.value == "live":
            self.notes += [n for n in rep.limits if fallback_env in n and n not in self.notes]

    def payload(self, reason: str, env_note: str | None = None) -> dict[str, Any]:
        """Plain JSON for the controller (``user_properties`` or the xdist worker output)."""
        out: dict[str, Any] = {"allow": list(self.allow)}
        if self.rerun is not None:
            out["rerun"] = self.rerun
        if self.error:
            out["error"] = self.error
        if self.target is None:
            return out
        out["target"] = self.target
        out["reason"] = reason
        out["complete"] = self.complete
        out["cpu_only"] = not self.judged and self.cpu_work  # ran torch, judged nothing
        out["problems"] = self.found
        if self.target["mode"] == "live":
            out["notes"] = ([env_note] if env_note else []) + self.notes
        return out


def fixture_label(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest, root: Path
) -> tuple[str, str | None]:
    """A wider-scoped fixture's baseline label and the pytest argument that reruns it.

    One instance per scope node: a module fixture from conftest.py is set up (and labelled)
    once per test module, a session fixture once, under the file that defines it.
    """
    name, scope = fixturedef.argname, fixturedef.scope
    node = request.node
    for prefix, kind in _SETUP_FIXTURES.items():
        if name.startswith(prefix):
            return f"{node.nodeid} ({kind})", node.nodeid or None
    if scope == "session":
        try:
            where = Path(inspect.getsourcefile(fixturedef.func) or "").resolve()
            base = where.relative_to(root).as_posix()
        except (TypeError, ValueError):
            base = f"<{getattr(fixturedef.func, '__module__', '?')}>"  # an installed plugin
        rerun = None
    else:
        base = rerun = node.nodeid or "."
    param = getattr(request, "param", None) if fixturedef.params is not None else None
    if fixturedef.params is not None:
        plain = isinstance(param, (str, int, float, bool)) or param is None
        name += f"[{param if plain else getattr(request, 'param_index', '?')}]"
    return f"{base}::{name} ({scope} fixture)", rerun


class Recording:
    """The owner stack of one process, and the one probe open on its top owner."""

    def __init__(
        self,
        mode: str,
        torch_version: str | None,
        macos: str | None,
        device: str,
        emulation: Emulation | None,
    ) -> None:
        self.mode = mode
        self.torch_version = torch_version
        self.macos = macos
        self.device = device
        self.emulation = emulation
        self.reason = ""  # why live or predict
        self.device_type = "mps"  # live mode may observe another backend (fpdev in tests)
        self.fallback_env = FALLBACK_ENV
        self.stack: list[Owner] = []
        self.probe: Probe | None = None  # open on stack[-1]

    def push(self, owner: Owner) -> None:
        self._close(None)
        self.stack.append(owner)
        self._open()

    def pop(self, owner: Owner, exc: BaseException | None = None) -> Report | None:
        """End ``owner``'s turn; the one below is charged again. Owners left above it (a
        teardown that never ended) are closed first, as incomplete."""
        if owner not in self.stack:
            return None
        while self.stack[-1] is not owner:
            self._close(RuntimeError("ended without its teardown"))
            self.stack.pop()
        rep = self._close(exc)
        self.stack.pop()
        self._open()
        return rep

    def cut(self, exc: BaseException | None = None) -> Report | None:
        """Start a new probe on the same owner; returns the closed probe's report."""
        rep = self._close(exc)
        self._open()
        return rep

    def finish(self) -> list[Owner]:
        """Close everything still open (an interrupted session); returns those owners."""
        left = list(reversed(self.stack))
        for owner in left:
            self.pop(owner)
        self.emulation = None
        return left

    def _open(self) -> None:
        if not self.stack or not self.stack[-1].record:
            return
        from fallback_probe.api import Probe

        probe = Probe(
            mode="live" if self.mode == "live" else "predict",
            torch_version=self.torch_version,
            macos=self.macos,
            device=self.device,  # type: ignore[arg-type]
            emulation=self.emulation,
            device_type=self.device_type,
            fallback_env=self.fallback_env,
        )
        try:
            probe.__enter__()
        except Exception as exc:
            owner = self.stack[-1]
            owner.error = owner.error or f"the probe could not start: {one_line(exc)}"
            return
        self.probe = probe

    def _close(self, exc: BaseException | None) -> Report | None:
        """Never raises: a probe failure is charged to the owner, its own error is kept."""
        probe, self.probe = self.probe, None
        if probe is None:
            return None
        owner = self.stack[-1]
        try:
            probe.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
            rep = probe.report
        except Exception as err:
            owner.error = owner.error or f"the probe failed after it ran: {one_line(err)}"
            return None
        owner.add(rep, self.fallback_env)
        return rep

"""The differential sweep: every OpInfo call predicted for a release and observed live.

Predict mode re-implements in Python what the dispatcher decides in C++. The sweep checks it
against a dispatcher: each sample of PyTorch's own OpInfo database (float32, forward and, where
the OpInfo supports autograd, backward) runs twice, once predicted for release V on the emulated
``mps`` device and once live on a real backend (MPS on a Mac, fpdev-as-V in CI). Per call, the
ops judged ``fallback`` or ``unsupported`` must be the same, with the same verdicts.

Used by ``fallback-probe selftest`` and ``python -m tests.differential`` alike.
"""

from __future__ import annotations

import copy
import fnmatch
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fallback_probe.errors import ExitCode, ProbeError
from fallback_probe.records import Verdict

Verdicts = dict[str, str]  # op -> "fallback" | "unsupported"
PHASES = ("forward", "backward")


@dataclass(frozen=True)
class Case:
    """One input to run: an OpInfo sample, or a client case (``run(device)`` does the work)."""

    opinfo: str
    sample: int
    run: Callable[[str], Any]  # device type -> output (tensors to differentiate, or None)
    grad: bool  # run a backward pass over the output too
    description: str = ""


@dataclass
class CallResult:
    opinfo: str
    sample: int
    phase: str
    description: str
    predicted: Verdicts
    observed: Verdicts
    error: str | None = None  # the case itself failed on one side: not compared

    @property
    def agrees(self) -> bool:
        return self.error is None and self.predicted == self.observed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "opinfo": self.opinfo,
            "sample": f"{self.sample}/{self.phase}",
            "input": self.description,
            "predicted": self.predicted,
            "observed": self.observed,
        }
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class SweepResult:
    release: str
    opinfos: int = 0
    calls: list[CallResult] = field(default_factory=list)

    @property
    def compared(self) -> list[CallResult]:
        return [c for c in self.calls if c.error is None]

    @property
    def disagreements(self) -> list[CallResult]:
        return [c for c in self.compared if not c.agrees]

    @property
    def errors(self) -> list[CallResult]:
        return [c for c in self.calls if c.error is not None]

    def summary(self) -> dict[str, Any]:
        return {
            "opinfos": self.opinfos,
            "calls": len(self.compared),
            "agree": sum(c.agrees for c in self.compared),
            "disagree": [c.to_json() for c in self.disagreements],
            "errors": [c.to_json() for c in self.errors],
        }


def require_opinfo() -> Any:
    """torch's OpInfo database, or a one-line ProbeError (exit 2) saying what is missing."""
    try:
        import expecttest  # noqa: F401  (op_db imports it; say so before torch's traceback)
    except ImportError:
        raise ProbeError(
            "the selftest needs expecttest to load torch's OpInfo database: pip install expecttest",
            ExitCode.USAGE,
        ) from None
    from torch.testing._internal.common_methods_invocations import op_db

    return op_db


def opinfo_cases(
    pattern: str = "*", max_samples: int | None = None, seed: int = 0
) -> Iterator[tuple[str, list[Case]]]:
    """(OpInfo name, its cases), every OpInfo matching ``pattern``; samples made on the CPU.

    ``max_samples`` keeps the first N samples of each OpInfo (every OpInfo stays covered).
    """

    with _untracked_samples():
        yield from _opinfo_cases(require_opinfo(), pattern, max_samples, seed)


def _opinfo_cases(
    infos: Any, pattern: str, max_samples: int | None, seed: int
) -> Iterator[tuple[str, list[Case]]]:
    import torch

    for info in infos:
        name = info.name + (f".{info.variant_test_name}" if info.variant_test_name else "")
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        if torch.float32 not in info.supported_dtypes("cpu"):
            yield name, []
            continue
        grad = bool(info.supports_autograd)
        torch.manual_seed(seed)
        cases = []
        try:
            samples = info.sample_inputs("cpu", torch.float32, requires_grad=grad)
            for i, sample in enumerate(samples):
                if max_samples is not None and i >= max_samples:
                    break
                cases.append(Case(name, i, _sample_runner(info, sample), grad, _describe(sample)))
        except Exception as exc:  # a sample generator that fails here fails on every side
            print(f"selftest: {name}: no samples ({_first_line(exc)})", file=sys.stderr)
        yield name, cases


def judge_case(
    case: Case,
    release: str,
    device_type: str,
    fallback_env: str | None,
    oplist: Any = None,
) -> list[CallResult]:
    """Predict and observe one case; one result per phase it ran."""
    predicted, p_err = _verdicts(case, _predict_probe(release, oplist), "mps", "predict")
    observed, o_err = _verdicts(case, _live_probe(device_type, fallback_env), device_type, "live")
    results = []
    error = "; ".join(e for e in (p_err, o_err) if e) or None
    for phase in PHASES:
        if phase == "backward" and phase not in predicted and phase not in observed:
            continue
        phase_error = error
        if error is None and (phase in predicted) != (phase in observed):
            phase_error = f"{phase} ran on one side only"
        results.append(
            CallResult(
                case.opinfo,
                case.sample,
                phase,
                case.description,
                predicted.get(phase, {}),
                observed.get(phase, {}),
                phase_error,
            )
        )
    return results


def sweep(
    release: str,
    device_type: str,
    fallback_env: str | None,
    pattern: str = "*",
    max_samples: int | None = None,
    extra: Iterable[tuple[str, list[Case]]] = (),
    oplist: Any = None,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """The whole sweep for one release: the OpInfos, the client models, then ``extra``."""
    from itertools import chain

    result = SweepResult(release)
    groups = chain(opinfo_cases(pattern, max_samples), client_cases(pattern), extra)
    for n, (name, cases) in enumerate(groups, 1):
        result.opinfos += 1
        for case in cases:
            result.calls.extend(judge_case(case, release, device_type, fallback_env, oplist))
        if progress is not None:
            bad = len(result.disagreements)
            progress(f"[{release}] {n} OpInfos, {len(result.calls)} calls, {bad} disagree: {name}")
    return result


@contextmanager
def _untracked_samples() -> Iterator[None]:
    """Sample iterators without torch's test-name tracking: it walks ``inspect.stack()`` per
    iterator, which is most of a sweep's time, to name a failing test we do not have."""
    from torch.testing._internal import common_utils
    from torch.testing._internal.opinfo import core

    modules = [m for m in (common_utils, core) if hasattr(m, "extract_test_fn")]
    saved = [m.extract_test_fn for m in modules]
    for module in modules:
        module.extract_test_fn = lambda: None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, fn in zip(modules, saved, strict=True):
            module.extract_test_fn = fn  # type: ignore[attr-defined]


def client_cases(pattern: str = "*") -> Iterator[tuple[str, list[Case]]]:
    """A few models as users write them (``client.*``), next to the OpInfos: the paths that
    only whole modules take (convolution routes, batch norm, attention, LSTM)."""
    import torch
    from torch import nn

    def conv_net() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(36, 5),
        )  # fmt: skip

    def encoder() -> nn.Module:
        return nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def lstm() -> nn.Module:
        return nn.LSTM(4, 6, batch_first=True)

    models: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
        "client.conv_net": (conv_net, (2, 3, 8, 8)),
        "client.transformer_encoder_layer": (encoder, (2, 5, 8)),
        "client.lstm": (lstm, (2, 5, 4)),
    }
    for name, (make, shape) in models.items():
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        torch.manual_seed(0)
        model, x = make(), torch.randn(shape)

        def run(device: str, model: nn.Module = model, x: torch.Tensor = x) -> Any:
            return copy.deepcopy(model).to(device)(x.to(device))  # .to() moves in place

        yield name, [Case(name, 0, run, True, f"T{list(shape)}")]


# -- running one case under one probe ---------------------------------------------------------


def _predict_probe(release: str, oplist: Any) -> Callable[[], Any]:
    from fallback_probe.api import Probe

    return lambda: Probe(mode="predict", torch_version=release, oplist=oplist)


def _live_probe(device_type: str, fallback_env: str | None) -> Callable[[], Any]:
    from fallback_probe.api import Probe

    return lambda: Probe(mode="live", device_type=device_type, fallback_env=fallback_env)


def _verdicts(
    case: Case, make_probe: Callable[[], Any], device: str, side: str
) -> tuple[dict[str, Verdicts], str | None]:
    """{phase: {op: verdict}} of the ops judged fallback/unsupported, or the case's error."""
    import torch

    ran: set[str] = set()
    probe = make_probe()
    try:
        with probe:
            out = case.run(device)
            ran.add("forward")
            if case.grad:
                leaves = [
                    t
                    for t in torch.utils._pytree.tree_leaves(out)
                    if isinstance(t, torch.Tensor) and t.requires_grad and t.numel()
                ]
                if leaves:
                    torch.autograd.backward(leaves, [torch.ones_like(t) for t in leaves])
                    ran.add("backward")
    except Exception as exc:
        if probe.collection is None:
            return {}, f"{side}: {_first_line(exc)}"
        ran.add("forward")  # what ran until the error is judged; the error is said
        return {p: _judged(probe, p == "backward") for p in ran}, f"{side}: {_first_line(exc)}"
    return {phase: _judged(probe, phase == "backward") for phase in ran}, None


def _judged(probe: Any, backward: bool) -> Verdicts:
    """The phase's calls judged again on their own: {op: verdict} for non-native verdicts."""
    from fallback_probe.verdicts import make_report

    col = probe.collection
    phase = replace(col, trace=[c for c in col.trace if c.backward == backward])
    report = make_report(phase, probe.torch_version, probe.macos, probe.oplist)
    return {r.op: r.verdict.value for r in report.ops if r.verdict is not Verdict.NATIVE}


def _sample_runner(info: Any, sample: Any) -> Callable[[str], Any]:
    def run(device: str) -> Any:
        moved = _to_device(sample, device)
        out = info(moved.input, *moved.args, **moved.kwargs)
        return moved.output_process_fn_grad(out)

    return run


def _to_device(sample: Any, device: str) -> Any:
    """The sample on ``device``: tensors moved (leaves keep requires_grad), device kwargs too."""
    import torch
    from torch.utils._pytree import tree_map

    def move(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            with torch.no_grad():
                moved = x.detach().to(device)
            return moved.requires_grad_(x.requires_grad) if x.is_leaf else moved
        if isinstance(x, torch.device) and x.type == "cpu":
            return torch.device(device)
        return x

    kwargs = {
        k: (device if k == "device" and v == "cpu" else tree_map(move, v))
        for k, v in sample.kwargs.items()
    }
    return type(sample)(
        tree_map(move, sample.input),
        args=tree_map(move, sample.args),
        kwargs=kwargs,
        output_process_fn_grad=sample.output_process_fn_grad,
    )


def _describe(sample: Any) -> str:
    import torch
    from torch.utils._pytree import tree_leaves

    def one(x: Any) -> str:
        if isinstance(x, torch.Tensor):
            return "T" + str(list(x.shape))
        text = repr(x)
        return text if len(text) <= 24 else text[:21] + "..."

    parts = [one(x) for x in tree_leaves((sample.input, sample.args))]
    parts += [f"{k}={one(v)}" for k, v in sample.kwargs.items()]
    return ", ".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__

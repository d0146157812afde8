"""What a report cannot see: the standing limits of a mode, named so renderers can tell them
from the notes of one run (a run's own notes stay in view; the standing ones fold away)."""

from __future__ import annotations

PREDICTED = (
    "Predicted, not observed: verdicts come from the operator list of the target release "
    "(its macOS wheel's native_functions.yaml and explicit CPU-fallback registrations)."
)
NEEDS_FALLBACK_ENV = (
    "Assumes PYTORCH_ENABLE_MPS_FALLBACK=1: without it every fallback here raises "
    "NotImplementedError instead."
)
RUNTIME_CHECKS = (
    "Not visible to a prediction: MPS kernels that reject some inputs at run time (dtype, "
    "rank, size checks) and kernels that send some inputs to the CPU themselves."
)
PREDICT_LIMITS = (PREDICTED, NEEDS_FALLBACK_ENV, RUNTIME_CHECKS)
STANDING = frozenset(PREDICT_LIMITS)


def split_limits(limits: tuple[str, ...], has_fallbacks: bool) -> tuple[list[str], list[str]]:
    """(shown, folded). Every note of this run is shown; of the standing limits only the one
    that can change this run's answer: with fallbacks, that they assume the fallback variable;
    without, that run-time checks of native kernels are invisible to a prediction."""
    keep = NEEDS_FALLBACK_ENV if has_fallbacks else RUNTIME_CHECKS
    shown = [lim for lim in limits if lim not in STANDING or lim == keep]
    folded = [lim for lim in limits if lim in STANDING and lim != keep]
    return shown, folded

"""Ops whose CPU trace is not what MPS runs, mapped to what the MPS dispatcher reaches.

Some composites pick a kernel by device inside their body (mps-facts §5): on the CPU the
trace shows CPU-only kernels (``mkldnn_convolution``, ``…_for_cpu``) that must never be
reported as MPS fallbacks. Each route lists candidates; the first one a release has decides.
"""

from __future__ import annotations

from fallback_probe.records import MATH_FOR_MPS

ROUTES: dict[str, tuple[str, ...]] = {
    "aten::convolution": ("aten::_mps_convolution",),
    "aten::_convolution": ("aten::_mps_convolution",),
    "aten::mkldnn_convolution": ("aten::_mps_convolution",),
    "aten::convolution_backward": ("aten::mps_convolution_backward",),
    "aten::mkldnn_rnn_layer": ("aten::_lstm_mps",),
    "aten::mkldnn_rnn_layer_backward": ("aten::lstm_mps_backward",),
    # attention.cpp: MPS takes the math backend, ``_math_for_mps`` only where the recorder
    # noted its conditions (records.MATH_FOR_MPS), else the portable math, which the recorder
    # traced as the call's children (collect/sdpa.py); with grad its backward is autograd
    # through those ops, recorded under the backward call.
    "aten::_scaled_dot_product_flash_attention_for_cpu": (
        "aten::_scaled_dot_product_attention_math_for_mps",
        "aten::_scaled_dot_product_attention_math",
    ),
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": (
        "aten::_scaled_dot_product_attention_math",
    ),
}
# Route targets a call reaches only under a condition the recorder notes on it.
CONDITIONAL_TARGETS: dict[str, str] = {
    "aten::_scaled_dot_product_attention_math_for_mps": MATH_FOR_MPS,
}

# The same composites when the call was a transposed convolution (the recorder notes it).
TRANSPOSED_ROUTES: dict[str, tuple[str, ...]] = {
    "aten::convolution": ("aten::_mps_convolution_transpose",),
    "aten::_convolution": ("aten::_mps_convolution_transpose",),
    "aten::convolution_backward": ("aten::mps_convolution_transpose_backward",),
}

# Kernels that only exist for the CPU: an unrouted one is reported as not judged, never
# as a fallback.
CPU_ONLY_MARKERS = ("aten::mkldnn_", "_for_cpu", "aten::_nnpack", "aten::fbgemm_")


def is_cpu_only(op: str) -> bool:
    return any(m in op for m in CPU_ONLY_MARKERS)

"""Evidence parsers against every message shape users saw (/work/shared/mps-messages.md).

The literals below are copied from that file; each says which release or shape it stands for.
"""

from __future__ import annotations

import pytest

from fallback_probe.collect.evidence import (
    ErrorKind,
    classify_error,
    fallback_op_from_warning,
    kernel_cpu_path_from_warning,
)

NI = ErrorKind.NOT_IMPLEMENTED
DT = ErrorKind.DTYPE
KC = ErrorKind.KERNEL_CHECK

# (shape, message, op the warning names)
FALLBACK_WARNINGS = [
    (
        "2.x, bare",
        "UserWarning: The operator 'aten::_upsample_bilinear2d_aa.out' is not currently "
        "supported on the MPS backend and will fall back to run on the CPU. This may have "
        "performance implications.",
        "aten::_upsample_bilinear2d_aa.out",
    ),
    (
        "2.x, wheel build, Triggered-internally suffix",
        "UserWarning: The operator 'aten::index_copy.out' is not currently supported on the MPS "
        "backend and will fall back to run on the CPU. This may have performance implications. "
        "(Triggered internally at /Users/runner/work/pytorch/pytorch/pytorch/aten/src/ATen/mps/"
        "MPSFallback.mm:13.)",
        "aten::index_copy.out",
    ),
    (
        "source build, <stdin> location prefix, explicit linalg_svd registration",
        "<stdin>:1: UserWarning: The operator 'aten::linalg_svd' is not currently supported on "
        "the MPS backend and will fall back to run on the CPU. This may have performance "
        "implications. (Triggered internally at /Users/hvaara/dev/pytorch/pytorch/aten/src/ATen/"
        "mps/MPSFallback.mm:13.)",
        "aten::linalg_svd",
    ),
    (
        "typographic quotes, as pasted",
        "UserWarning: The operator \u2018aten::nonzero\u2019 is not currently supported on the "
        "MPS backend and will fall back to run on the CPU. This may have performance "
        "implications.",
        "aten::nonzero",
    ),
    (
        "2022 source wording, missing 'have'",
        "The operator 'aten::X' is not currently supported on the MPS backend and will fall back "
        "to run on the CPU. This may performance implications.",
        "aten::X",
    ),
    (
        "fpdev test backend, as Python receives it",
        "The operator 'aten::sum.IntList_out' is not currently supported on the fpdev backend "
        "and will fall back to run on the CPU. This may have performance implications. "
        "(Triggered internally at /work/main/tests/fpdev/fpdev.cpp:396.)",
        "aten::sum.IntList_out",
    ),
    (
        "an op outside aten",
        "UserWarning: The operator 'torchvision::nms' is not currently supported on the MPS "
        "backend and will fall back to run on the CPU. This may have performance implications.",
        "torchvision::nms",
    ),
    (
        "wrapped over two lines in a log",
        "The operator 'aten::index_copy.out' is not currently supported on the MPS backend\n"
        "and will fall back to run on the CPU. This may have performance implications.",
        "aten::index_copy.out",
    ),
]

KERNEL_CPU_PATH = (
    "UserWarning: MPS: nonzero op is supported natively starting from macOS 13.0. Falling back "
    "on CPU. This may have performance implications."
)

# (shape, exception, device_type, expected)
ERRORS = [
    (
        "not implemented, 2.0-2.5 wording (issue 77764)",
        NotImplementedError(
            "The operator 'aten::_fake_quantize_learnable_per_tensor_affine' is not currently "
            "implemented for the MPS device. If you want this op to be added in priority during "
            "the prototype phase of this feature, please comment on https://github.com/pytorch/"
            "pytorch/issues/77764. As a temporary fix, you can set the environment variable "
            "`PYTORCH_ENABLE_MPS_FALLBACK=1` to use the CPU as a fallback for this op. WARNING: "
            "this will be slower than running natively on MPS."
        ),
        "mps",
        (NI, "aten::_fake_quantize_learnable_per_tensor_affine"),
    ),
    (
        "not implemented, 2.6+ wording (issue 141287)",
        NotImplementedError(
            "The operator 'aten::_linalg_solve_ex.result' is not currently implemented for the "
            "MPS device. If you want this op to be considered for addition please comment on "
            "https://github.com/pytorch/pytorch/issues/141287 and mention use-case, that resulted "
            "in missing op as well as commit hash 2236df1770800ffea5697b11b0bb0d910b2e59e1. As a "
            "temporary fix, you can set the environment variable `PYTORCH_ENABLE_MPS_FALLBACK=1` "
            "to use the CPU as a fallback for this op. WARNING: this will be slower than running "
            "natively on MPS."
        ),
        "mps",
        (NI, "aten::_linalg_solve_ex.result"),
    ),
    (
        "not implemented, 2022 typo 'not current implemented'",
        NotImplementedError(
            "The operator 'aten::index.Tensor_out' is not current implemented for the MPS device."
        ),
        "mps",
        (NI, "aten::index.Tensor_out"),
    ),
    (
        "dispatcher: no kernel and no fallback (2022)",
        NotImplementedError(
            "Could not run 'aten::index.Tensor' with arguments from the 'MPS' backend. This could "
            "be because the operator doesn't exist for this backend, or was omitted during the "
            "selective/custom build process (if using custom build)."
        ),
        "mps",
        (NI, "aten::index.Tensor"),
    ),
    (
        "fpdev error fallback",
        NotImplementedError(
            "The operator 'aten::exp.out' is not currently implemented for the fpdev device. If "
            "you want this op to be considered for addition please comment on https://github.com/"
            "pytorch/pytorch/issues/141287 and mention use-case, that resulted in missing op as "
            "well as commit hash fpdev. As a temporary fix, you can set the environment variable "
            "`FPDEV_ENABLE_FALLBACK=1` to use the CPU as a fallback for this op. WARNING: this "
            "will be slower than running natively on fpdev."
        ),
        "fpdev",
        (NI, "aten::exp.out"),
    ),
    (
        "float64 moved to MPS",
        TypeError(
            "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support "
            "float64. Please use float32 instead."
        ),
        "mps",
        (DT, None),
    ),
    (
        "complex128 moved to MPS",
        TypeError(
            "Trying to convert ComplexDouble to the MPS backend but it does not have support for "
            "that dtype."
        ),
        "mps",
        (DT, None),
    ),
    (
        "complex64 before macOS 14",
        TypeError(
            "Trying to convert ComplexFloat to the MPS backend but it does not have support for "
            "that dtype."
        ),
        "mps",
        (DT, None),
    ),
    (
        "bfloat16 before macOS 14",
        TypeError(
            "Trying to convert BFloat16 to the MPS backend but it does not have support for that "
            "dtype."
        ),
        "mps",
        (DT, None),
    ),
    ("bfloat16, short wording", TypeError("BFloat16 is not supported on MPS"), "mps", (DT, None)),
    (
        "float8 (no class shown in the report)",
        TypeError(
            "Trying to convert Float8_e4m3fn to the MPS backend but it does not have support for "
            "that dtype."
        ),
        "mps",
        (DT, None),
    ),
    ("MPS dtype mapping", RuntimeError("Undefined type ComplexDouble"), "mps", (DT, None)),
    (
        "crash text from a dead child's stderr",
        TypeError(
            "libc++abi: terminating due to uncaught exception of type c10::TypeError: Trying to "
            "convert ComplexFloat to the MPS backend but it does not have support for that dtype."
        ),
        "mps",
        (DT, None),
    ),
    (
        "fpdev float64",
        TypeError(
            "Cannot convert a fpdev Tensor to float64 dtype as the fpdev framework doesn't "
            "support float64. Please use float32 instead."
        ),
        "fpdev",
        (DT, None),
    ),
    (
        "kernel check: adaptive pool",
        RuntimeError("Adaptive pool MPS: input sizes must be divisible by output sizes"),
        "mps",
        (KC, None),
    ),
    (
        "kernel check: adaptive pool, long wording",
        RuntimeError(
            "Adaptive pool MPS: output sizes must be divisible by input sizes. Non-divisible input "
            "sizes are not implemented on MPS device yet. For now, you can manually transfer "
            "tensor to cpu in this case."
        ),
        "mps",
        (KC, None),
    ),
    (
        "kernel check: mm dtype",
        RuntimeError("MPS device does not support mm for non-float inputs"),
        "mps",
        (KC, None),
    ),
    (
        "kernel check: cumsum int64",
        RuntimeError("MPS does not support cumsum op with int64 input"),
        "mps",
        (KC, None),
    ),
    (
        "kernel check naming the device in lower case",
        RuntimeError("Placeholder storage has not been allocated on mps device!"),
        "mps",
        (KC, None),
    ),
    (
        "fpdev kernel check",
        RuntimeError("fpdev device does not support mm for non-float inputs"),
        "fpdev",
        (KC, None),
    ),
    (
        "MPS kernel check seen while probing another device type still names MPS",
        RuntimeError("MPS device does not support mm for non-float inputs"),
        "fpdev",
        (KC, None),
    ),
]

UNRELATED_WARNINGS = [
    "UserWarning: The given NumPy array is not writable, and PyTorch does not support "
    "non-writable tensors.",
    "UserWarning: TypedStorage is deprecated. It will be removed in the future.",
    # the error fallback's text is not a fallback warning
    "The operator 'aten::index.Tensor_out' is not current implemented for the MPS device.",
    # truncated before the fallback clause
    "The operator 'aten::nonzero' is not currently supported on the MPS backend",
    # no namespace: not an op name
    "The operator 'nonzero' is not currently supported on the MPS backend and will fall back "
    "to run on the CPU.",
    # the in-kernel CPU path is a different message
    KERNEL_CPU_PATH,
    "",
]

NOT_OURS = [
    ("user's shape bug", RuntimeError("mat1 and mat2 shapes cannot be multiplied (5x4 and 3x8)")),
    ("user's abstract method", NotImplementedError("subclasses must implement forward()")),
    ("user's ValueError naming MPS", ValueError("MPS is not available on this machine")),
    ("KeyError", KeyError("mps")),
    ("'mps' inside a word", RuntimeError("timestamps must be sorted")),
    (
        "mixed devices: the model's own bug",
        RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            "mps:0 and cpu!"
        ),
    ),
    (
        "out of memory is not a kernel check",
        RuntimeError("MPS backend out of memory (MPS allocated: 1.70 GB, other allocations: 0)"),
    ),
    (
        "error fallback of another device",
        NotImplementedError(
            "The operator 'aten::exp.out' is not currently implemented for the CUDA device."
        ),
    ),
    (
        "dispatcher error for the CPU backend",
        NotImplementedError(
            "Could not run 'quantized::linear' with arguments from the 'CPU' backend."
        ),
    ),
    (
        "float64 refused by another backend",
        TypeError("Cannot convert a XLA Tensor to float64 dtype as the XLA framework doesn't"),
    ),
    ("user's TypeError", TypeError("unsupported operand type(s) for +: 'int' and 'str'")),
    (
        "mps-messages.md kernel check that names no device: text alone cannot tell it from "
        "the user's error",
        RuntimeError("scatter(): Yet not supported for complex"),
    ),
    ("not an Exception subclass", KeyboardInterrupt()),
]


@pytest.mark.parametrize(
    ("message", "op"),
    [(m, op) for _, m, op in FALLBACK_WARNINGS],
    ids=[s for s, _, _ in FALLBACK_WARNINGS],
)
def test_fallback_warning_shapes(message: str, op: str) -> None:
    assert fallback_op_from_warning(message) == op
    assert kernel_cpu_path_from_warning(message) is None


@pytest.mark.parametrize("message", UNRELATED_WARNINGS)
def test_unrelated_warnings_are_not_fallbacks(message: str) -> None:
    assert fallback_op_from_warning(message) is None


def test_kernel_cpu_path() -> None:
    assert kernel_cpu_path_from_warning(KERNEL_CPU_PATH) == "aten::nonzero"
    assert fallback_op_from_warning(KERNEL_CPU_PATH) is None


@pytest.mark.parametrize(
    "message",
    [
        "MPS: nonzero op is supported natively starting from macOS 13.0.",  # no CPU path
        "MPS: no support for int64 reduction ops, casting it to int32",
        FALLBACK_WARNINGS[0][1],
        "",
    ],
)
def test_kernel_cpu_path_near_misses(message: str) -> None:
    assert kernel_cpu_path_from_warning(message) is None


@pytest.mark.parametrize(
    ("exc", "device_type", "expected"),
    [(e, d, x) for _, e, d, x in ERRORS],
    ids=[s for s, _, _, _ in ERRORS],
)
def test_classify_error_shapes(
    exc: BaseException, device_type: str, expected: tuple[ErrorKind, str | None]
) -> None:
    assert classify_error(exc, device_type) == expected


@pytest.mark.parametrize("exc", [e for _, e in NOT_OURS], ids=[s for s, _ in NOT_OURS])
def test_classify_error_leaves_other_errors_alone(exc: BaseException) -> None:
    assert classify_error(exc) is None


def test_default_device_is_mps() -> None:
    fpdev_error = ERRORS[4][1]
    assert classify_error(fpdev_error) is None  # another backend's fallback is not MPS's
    assert classify_error(ERRORS[1][1]) == (NI, "aten::_linalg_solve_ex.result")


def test_error_kind_values_are_strings() -> None:
    assert [k.value for k in ErrorKind] == ["not_implemented", "dtype", "kernel_check"]
    assert ErrorKind("dtype") is ErrorKind.DTYPE

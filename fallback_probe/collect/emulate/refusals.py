"""What a Mac refuses, worded as it words it, and where in the user's code it happened.

A refusal is listed, not raised (unless the emulation stops at the first one): the probe's
job is to show every blocker of a script in one run, so the op runs on the backing device,
the recorder marks it with the error a Mac prints, and the run goes on.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass

import torch

# Wording of the errors a Mac raises (torch 2.13: aten/src/ATen/native/TensorIterator.cpp,
# aten/src/ATen/mps/EmptyTensor.cpp, OperationUtils.mm, torch/csrc/utils/tensor_numpy.cpp).
MIXED_DEVICE_MESSAGE = (
    "Expected all tensors to be on the same device, but found at least two devices, mps:0 and cpu!"
)
FLOAT64_MESSAGE = (
    "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support "
    "float64. Please use float32 instead."
)
COMPLEX128_MESSAGE = (
    "Trying to convert ComplexDouble to the MPS backend but it does not have support for "
    "that dtype."
)
NUMPY_MESSAGE = (
    "can't convert mps:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
    "to host memory first."
)
TENSOR_SPLIT_MESSAGE = (
    "tensor_split expected tensor_indices_or_sections to be on cpu, but it's on mps:0"
)
# Below macOS 14 (torch 2.3-2.8: aten/src/ATen/native/mps/OperationUtils.mm); torch 2.9 and
# newer need macOS 14 for the whole MPS backend.
BFLOAT16_MESSAGE = "MPS BFloat16 is only supported on MacOS 14 or newer"
COMPLEX64_MESSAGE = "MPS complex types are only supported on MacOS 14.0 or newer."

_ALWAYS_REFUSED: dict[torch.dtype, tuple[type[Exception], str]] = {
    torch.float64: (TypeError, FLOAT64_MESSAGE),
    torch.complex128: (TypeError, COMPLEX128_MESSAGE),
}
_NEED_MACOS_14: dict[torch.dtype, tuple[type[Exception], str]] = {
    torch.bfloat16: (RuntimeError, BFLOAT16_MESSAGE),
    torch.complex64: (RuntimeError, COMPLEX64_MESSAGE),
}


def refused_dtypes(macos: str | None) -> dict[torch.dtype, tuple[type[Exception], str]]:
    """dtype -> (exception, message) of the dtypes MPS refuses on ``macos`` (None: newest)."""
    refused = dict(_ALWAYS_REFUSED)
    if macos is not None and _major(macos) < 14:
        refused.update(_NEED_MACOS_14)
    return refused


def _major(macos: str) -> int:
    digits = "".join(ch for ch in macos.split(".")[0] if ch.isdigit())
    return int(digits) if digits else 0


@dataclass
class Refusal:
    """One place where a Mac raises: what it prints, and where in the user's code."""

    kind: str  # "dtype", "mixed devices", "numpy" or "cpu argument"
    error: str  # "TypeError: Cannot convert a MPS Tensor to float64 ...", as a Mac prints it
    where: str  # the user's "file:line", "" if unknown
    on_op: bool = False  # the recorder marked an op with it (it is in the report's verdicts)

    @property
    def message(self) -> str:
        return self.error.split(": ", 1)[-1]


_PATHS = sysconfig.get_paths()
_INTERNAL = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep,
)
_STDLIB = _PATHS["stdlib"] + os.sep
_SITE = (_PATHS["purelib"] + os.sep, _PATHS["platlib"] + os.sep)


def _user_location() -> str:
    """'file:line' of the innermost frame outside torch, this package and the stdlib."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        internal = (
            name.startswith(_INTERNAL)
            or name.startswith("<frozen")
            or (name.startswith(_STDLIB) and not name.startswith(_SITE))
        )
        if not internal:
            path = os.path.abspath(name)
            try:
                rel = os.path.relpath(path)
                path = rel if not rel.startswith("..") else path
            except ValueError:
                pass
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return ""

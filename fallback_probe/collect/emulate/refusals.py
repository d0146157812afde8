"""What a Mac refuses, worded as it words it, and where in the user's code it happened."""

from __future__ import annotations

import os
import sys
import sysconfig

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
_UNSUPPORTED_DTYPES = {torch.float64: FLOAT64_MESSAGE, torch.complex128: COMPLEX128_MESSAGE}


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

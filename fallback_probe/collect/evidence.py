"""Read what PyTorch's MPS backend says about an op: fallback warnings and errors.

Pure text parsing, no torch import: the live collector feeds it warnings and exceptions caught
while a model runs, and the parsers must accept every wording released PyTorch has used
(/work/shared/mps-messages.md). A text that matches no known shape is "unrecognised" (None),
never a verdict. Backend names are not hard-wired to MPS, so the same parsers read the fpdev
test backend (tests/fpdev), which words its messages like MPS.
"""

from __future__ import annotations

import re
from enum import Enum

__all__ = [
    "ErrorKind",
    "classify_error",
    "fallback_op_from_warning",
    "kernel_cpu_path_from_warning",
]


class ErrorKind(str, Enum):
    """Why an op could not run on the device."""

    NOT_IMPLEMENTED = "not_implemented"  # no kernel and the CPU fallback is off
    DTYPE = "dtype"  # the device has no such dtype
    KERNEL_CHECK = "kernel_check"  # a kernel exists but refused these inputs


# Users paste messages with typographic quotes; C++ prints ASCII ones.
_Q = "['\u2018\u2019`\"]"
# "aten::index_copy.out", "torchvision::nms", or the docs' placeholder "aten::X".
_OP = r"(?P<op>[A-Za-z_]\w*::[A-Za-z_]\w*(?:\.\w+)?)"

_FALLBACK_WARNING = re.compile(
    rf"The\s+operator\s+{_Q}{_OP}{_Q}\s+is\s+not\s+currently\s+supported\s+on\s+the\s+"
    r"(?P<backend>[\w.-]+)\s+backend\s+and\s+will\s+fall\s+back\s+to\s+run\s+on\s+the\s+CPU"
)
_KERNEL_CPU_PATH = re.compile(
    r"(?P<backend>\w+):\s+(?P<name>[A-Za-z_]\w*)\s+op\s+is\s+supported\s+natively\s+starting\s+"
    r"from\s+macOS\s+[\d.]+\.\s+Falling\s+back\s+on\s+CPU"
)
# Error fallback: "not currently implemented" (2.0+) and the 2022 typo "not current implemented".
_ERROR_FALLBACK = re.compile(
    rf"The\s+operator\s+{_Q}{_OP}{_Q}\s+is\s+not\s+current(?:ly)?\s+implemented\s+for\s+the\s+"
    r"(?P<device>[\w.-]+)\s+device"
)
# The dispatcher's own message when a backend has no kernel and no fallback.
_COULD_NOT_RUN = re.compile(
    rf"Could\s+not\s+run\s+{_Q}{_OP}{_Q}\s+with\s+arguments\s+from\s+the\s+{_Q}(?P<device>[\w.-]+){_Q}"
    r"\s+backend"
)

# c10 ScalarType names and their Python spellings, for dtype messages.
_DTYPE_NAME = (
    r"(?:Double|Float|Half|BFloat16|ComplexDouble|ComplexFloat|ComplexHalf|Float8_\w+|"
    r"Float4_\w+|Bits\w*|UInt\d+|Int\d*|Long|Short|Char|Byte|Bool|QInt\w+|QUInt\w+|"
    r"float\d+|bfloat16|complex\d+|uint\d+|int\d+)"
)
_DTYPE_ERRORS = (
    # "Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64."
    re.compile(
        r"Cannot\s+convert\s+an?\s+(?P<device>[\w.-]+)\s+Tensor\s+to\s+"
        + _DTYPE_NAME
        + r"\s+dtype\s+as\s+the\s+[\w.-]+\s+framework\s+doesn.t\s+support"
    ),
    # "Trying to convert ComplexDouble to the MPS backend but it does not have support for that dtype."
    re.compile(
        r"Trying\s+to\s+convert\s+"
        + _DTYPE_NAME
        + r"\s+to\s+the\s+(?P<device>[\w.-]+)\s+backend\s+"
        r"but\s+it\s+does\s+not\s+have\s+support\s+for\s+that\s+dtype"
    ),
    # "BFloat16 is not supported on MPS"
    re.compile(r"\b" + _DTYPE_NAME + r"\s+is\s+not\s+supported\s+on\s+(?P<device>[\w.-]+)"),
    # "Undefined type ComplexDouble": MPS's dtype mapping; it names no device.
    re.compile(r"\bUndefined\s+type\s+" + _DTYPE_NAME + r"\b"),
)

# RuntimeErrors that name the device but are not a kernel refusing inputs: the model mixing
# devices, or the device running out of memory.
_NOT_KERNEL_CHECKS = re.compile(
    r"Expected\s+all\s+tensors\s+to\s+be\s+on\s+the\s+same\s+device|out\s+of\s+memory",
    re.IGNORECASE,
)


def fallback_op_from_warning(message: str) -> str | None:
    """The op named by a backend-fallback warning ("aten::index_copy.out"), else None.

    Accepts every released wording, any backend name (MPS, fpdev), typographic quotes, a
    "UserWarning:" prefix and a "(Triggered internally at ...)" suffix.
    """
    match = _FALLBACK_WARNING.search(message)
    return match.group("op") if match else None


def kernel_cpu_path_from_warning(message: str) -> str | None:
    """The op whose own MPS kernel sent its inputs to the CPU ("aten::nonzero"), else None.

    These warnings come from inside a kernel (e.g. on macOS older than the op needs), not from
    the backend fallback, so they carry a bare op name rather than an overload.
    """
    match = _KERNEL_CPU_PATH.search(message)
    return f"aten::{match.group('name')}" if match else None


def classify_error(
    exc: BaseException, device_type: str = "mps"
) -> tuple[ErrorKind, str | None] | None:
    """Whether an exception says the device could not run an op, and why.

    Returns (NOT_IMPLEMENTED, op) for the error fallback, (DTYPE, None) for a dtype the device
    lacks, (KERNEL_CHECK, None) for a RuntimeError naming the device, and None for anything
    else: then it is the user's own error, not ours to report.
    """
    if not isinstance(exc, (RuntimeError, TypeError)):
        return None
    text = str(exc)
    devices = {"mps", device_type.lower()}

    def ours(match: re.Match[str]) -> bool:
        device = match.groupdict().get("device")
        return device is None or device.lower() in devices

    if isinstance(exc, RuntimeError):  # NotImplementedError is a RuntimeError
        for pattern in (_ERROR_FALLBACK, _COULD_NOT_RUN):
            match = pattern.search(text)
            if match and ours(match):
                return ErrorKind.NOT_IMPLEMENTED, match.group("op")
    for pattern in _DTYPE_ERRORS:
        match = pattern.search(text)
        if match and ours(match):
            return ErrorKind.DTYPE, None
    if (
        isinstance(exc, RuntimeError)
        and _names_device(text, device_type)
        and not _NOT_KERNEL_CHECKS.search(text)
    ):
        return ErrorKind.KERNEL_CHECK, None
    return None


def _names_device(text: str, device_type: str) -> bool:
    """ "MPS"/"mps" or the device type as a word: "mps:0" and "'mps'" count, "numps" does not."""
    names = {"MPS", "mps", device_type, device_type.lower(), device_type.upper()}
    alternatives = "|".join(map(re.escape, sorted(names)))
    return re.search(rf"(?<![A-Za-z0-9_])(?:{alternatives})(?![A-Za-z0-9_])", text) is not None

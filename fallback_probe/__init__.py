"""fallback-probe: which PyTorch ops fall back from Apple's MPS GPU to the CPU."""

from fallback_probe._version import __version__
from fallback_probe.records import Mode, OpCall, OpStatus, TensorMeta, Verdict

__all__ = ["Mode", "OpCall", "OpStatus", "TensorMeta", "Verdict", "__version__"]

"""fallback-probe: which PyTorch ops fall back from Apple's MPS GPU to the CPU.

``with fallback_probe.probe() as p: ...`` then ``p.report``. Importing the package does not
import torch (the pytest plugin and the CLI must set the fallback variable first).
"""

from fallback_probe._version import __version__
from fallback_probe.api import Probe, probe
from fallback_probe.records import Mode, OpCall, OpStatus, TensorMeta, Verdict
from fallback_probe.report import Report

__all__ = [
    "Mode",
    "OpCall",
    "OpStatus",
    "Probe",
    "Report",
    "TensorMeta",
    "Verdict",
    "__version__",
    "probe",
]

"""An emulated ``mps`` device, so predict mode sees a script the way a Mac would run it.

An unchanged script decides where each tensor lives (``torch.backends.mps.is_available()``,
``.to(device)``); run as-is on Linux it takes its CPU path, and every CPU-side op would be
judged as if it ran on MPS. Inside :func:`emulated_mps` the script finds an ``mps`` device:
tensors placed there are wrapper tensors whose data lives on a *backing* device (``cpu``, or
``meta`` for ``--device meta``) but whose Python ``device`` is ``mps:0``. Only ops that touch
such a tensor are the ones a Mac would run on the GPU; :meth:`Emulation.is_emulated` tells the
recorder which those are. See docs/emulation.md for what is covered and what is not.

Where each piece lives:

- ``context``: :func:`emulated_mps`, which installs everything below and undoes it on exit.
- ``emulation``: :class:`Emulation`, one run's state and the moves to and from ``mps``.
- ``tensor``: the wrapper tensor (``__torch_function__`` / ``__torch_dispatch__``);
  ``aliasing`` (in-place and ``out=`` results) and ``mixing`` (mixed-device calls) serve it.
- ``refusals``: what a Mac refuses and the message it prints; where in user code it happened.
- ``factories``: ``device="mps"`` in constructors (MPS dispatch-key kernels, ``Tensor.to``,
  ``torch.tensor`` ...).
- ``modules``: parameter moves (``nn.Module._apply``, ``p.data = ...``).
- ``serialization``: ``torch.save`` / ``torch.load`` with the ``mps`` location tag.
- ``device_api``: ``torch.backends.mps``, ``torch.mps``, ``torch.accelerator``,
  ``torch.get_device_module``, pinned memory, ``torch.compile``; ``streams``:
  ``torch.Event`` / ``Stream`` / ``Generator`` on mps; ``autocast``: MPS's autocast policy.
- ``meta``: the meta backing (``--device meta``).
- ``common``: the device, the active emulation, patch-and-restore.
"""

from .common import MPS_DEVICE, Backing
from .context import emulated_mps
from .emulation import Emulation
from .meta import META_INIT_MIN_NUMEL
from .refusals import COMPLEX128_MESSAGE, FLOAT64_MESSAGE, MIXED_DEVICE_MESSAGE, NUMPY_MESSAGE

__all__ = [
    "COMPLEX128_MESSAGE",
    "FLOAT64_MESSAGE",
    "META_INIT_MIN_NUMEL",
    "MIXED_DEVICE_MESSAGE",
    "MPS_DEVICE",
    "NUMPY_MESSAGE",
    "Backing",
    "Emulation",
    "emulated_mps",
]

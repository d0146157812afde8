"""``--import tests.fpdev.autoload``: load the fpdev backend, as an out-of-tree backend's package
would on import (``fallback-probe selftest --device-type fpdev``)."""

from tests.fpdev import load_fpdev

load_fpdev()

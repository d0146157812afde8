"""Generated per-release MPS operator lists (one JSON file per torch minor release).

Shipped inside the wheel as ``fallback_probe.operator_lists``; never edit by hand:
regenerate with ``fallback-probe oplists build --torch-version X.Y.Z``.
"""

"""``python -m fallback_probe`` is the ``fallback-probe`` command."""

import sys

from fallback_probe.cli import main

sys.exit(main())

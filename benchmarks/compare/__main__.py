"""``python -m benchmarks.compare [--quick] [--hosts URL ...] [--only abcd]``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())

"""``python -m benchmarks.bench_compare``: the former name of :mod:`benchmarks.compare`.

Kept so that old invocations and imports (``main``, ``run``, ``checks``, ``Check``,
``add_common_args``) keep working; the code lives in the package.
"""

from __future__ import annotations

import sys

from .common import Check, add_common_args
from .compare import checks, main, run

__all__ = ["Check", "add_common_args", "checks", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())

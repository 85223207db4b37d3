"""Which psystats wrote a row: the version recorded with every ingest, run and fit.

It lives in the bottom layer so that the warehouse, scoring and stats code can
record it without importing the top-level package (layers only import downward).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("psystats")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

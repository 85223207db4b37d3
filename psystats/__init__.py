"""psystats: how well language models predict what people do in psychology experiments."""

from psystats.warehouse.provenance import __version__

__all__ = ["Warehouse", "__version__", "open"]


def __getattr__(name: str):
    # The notebook API (``ps.open(path)``) is imported on first use, so
    # ``import psystats`` stays light (no torch, no PyMC).
    if name in ("open", "Warehouse"):
        from psystats import api

        return getattr(api, name)
    raise AttributeError(f"module 'psystats' has no attribute {name!r}")

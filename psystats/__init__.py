"""psystats: how well language models predict what people do in psychology experiments."""

from psystats.warehouse.provenance import __version__

__all__ = ["__version__"]

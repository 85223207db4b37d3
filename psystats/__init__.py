"""psystats: how well language models predict what people do in psychology experiments."""
__version__ = "0.1.0"

"""The DuckDB warehouse: schema, migrations, ingest and queries."""

from .db import WarehouseError, connect, default_path, transaction

__all__ = ["WarehouseError", "connect", "default_path", "transaction"]

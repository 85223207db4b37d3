"""The DuckDB warehouse: opening it (``db.open``), its schema, ingest, integrity, queries.

Import the module that defines a name (``psystats.warehouse.db.open``,
``psystats.warehouse.errors.WarehouseError``, ``psystats.warehouse.sql.scalar``);
this package re-exports nothing.
"""

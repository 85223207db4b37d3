"""Opening the warehouse for a long command that must not hold the file between statements."""

from __future__ import annotations

import click

from psystats.warehouse.brief import BriefConnection
from psystats.warehouse.db import WarehouseError

from .common import _waiting, db_path, lock_timeout


def open_brief(db: str | None, *, create: bool = False) -> BriefConnection:
    """A :class:`BriefConnection` to the command's warehouse, closed when the command ends.

    Other processes can read and write the file between its statements (see
    docs/warehouse.md, "Which commands can run at the same time").
    """
    try:
        con = BriefConnection(
            db_path(db), create=create, lock_timeout=lock_timeout(), on_wait=_waiting
        )
    except WarehouseError as e:
        raise click.ClickException(str(e)) from None
    click.get_current_context().call_on_close(con.close)
    return con

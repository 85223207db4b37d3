"""Why scoring stops: errors a user can act on."""

from __future__ import annotations

from collections.abc import Sequence

from psystats.warehouse.errors import WarehouseError


class ScoringError(WarehouseError):
    """Scoring cannot go on; the message says why and what to do."""


class NonFiniteLogits(ScoringError):
    def __init__(self, response_ids: Sequence[int]):
        ids = sorted(set(int(r) for r in response_ids))
        shown = ", ".join(str(r) for r in ids[:20]) + (" ..." if len(ids) > 20 else "")
        super().__init__(
            f"the model produced NaN/inf logits for {len(ids)} response(s) "
            f"(response_id {shown}); nothing from this batch was written. Try --dtype float32."
        )
        self.response_ids = ids

"""The start-up self-check: the engine's path against a plain forward on a probe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ScoringError
from .plan import _Prepared, _Row
from .tokenize import Tokenized


class SelfCheckMixin:
    """``Scorer._self_check``: refuse architectures the engine's path does not reproduce."""

    # Set by ``Scorer.__init__``.
    model_row: dict
    tokenizer: Any
    prefix_ids: list[int]
    lm: Any
    dtype: str
    packing: str
    input_device: Any

    if TYPE_CHECKING:
        # ``ForwardMixin._forward``

        def _forward(
            self, group: list[_Row], prepared: list[_Prepared], *, compiled: bool = True
        ) -> None: ...

    def _self_check(self) -> None:
        """Compare the engine's path with a plain forward on a probe; refuse if they differ.

        Two short documents are scored packed together (when packing), one
        with an option branch, and their log-probabilities compared with
        ``log_softmax(model(ids).logits)``.  This catches architectures whose
        attention ignores custom masks/position ids or whose LM head does more
        than the output embedding (logit soft-capping, scaling).
        """
        import torch

        text_a = "In each trial you choose a box. You press <<J>>. You win 3 points."
        text_b = "Rate the pair. You answer <<7>>."
        ids_a = np.asarray(
            self.prefix_ids + self.tokenizer(text_a, add_special_tokens=False)["input_ids"],
            np.int64,
        )
        ids_b = np.asarray(
            self.prefix_ids + self.tokenizer(text_b, add_special_tokens=False)["input_ids"],
            np.int64,
        )
        rows = [
            _Row(part=0, lo=0, ids=ids_a, targets=np.arange(1, len(ids_a))),
            _Row(part=1, lo=0, ids=ids_b, targets=np.arange(1, len(ids_b))),
        ]
        # A two-token branch from the middle of document a.
        mid = len(ids_a) // 2
        rows[0].branch_start = [mid]
        rows[0].branch_ids = [ids_a[mid : mid + 2]]
        rows[0].oq_branch = np.asarray([0], np.int64)
        rows[0].oq_pos = np.asarray([1], np.int64)
        rows[0].oq_token = np.asarray([int(ids_a[mid + 2])], np.int64)
        rows[0].oq_ref = np.asarray([0], np.int64)
        dummy: list[_Prepared] = []
        for r, ids in zip(rows, (ids_a, ids_b)):
            tk = Tokenized(ids, np.asarray([1]), np.asarray([len(ids)]))
            dummy.append(_Prepared(p=None, tok=tk, rows=[r], opt_query_group=np.zeros(1, np.int64)))
            dummy[-1].lp = np.zeros(len(ids))
            dummy[-1].top1 = np.zeros(len(ids), bool)
            dummy[-1].ent = np.zeros(len(ids))
            dummy[-1].oq_lp = np.zeros(1)
        groups = [rows] if self.packing == "packed" else [[rows[0]], [rows[1]]]
        for g in groups:
            # Eager: the check is about masks, positions and the head; a compiled
            # decoder is the same computation and is tested against the eager one.
            self._forward(g, dummy, compiled=False)
        dev = self.input_device
        worst = 0.0
        with torch.inference_mode():
            for prep, ids in zip(dummy, (ids_a, ids_b)):
                assert prep.lp is not None  # filled by _forward
                ref = torch.log_softmax(
                    self.lm(torch.as_tensor(ids, device=dev)[None]).logits[0].double().cpu(), -1
                )
                want = ref[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].numpy()
                worst = max(worst, float(np.max(np.abs(prep.lp[1:] - want))))
            ref_b = torch.log_softmax(
                self.lm(torch.as_tensor(ids_a[: mid + 2], device=dev)[None]).logits[0, -1].double(),
                -1,
            )
            oq_lp = dummy[0].oq_lp
            assert oq_lp is not None  # filled by _forward
            worst = max(worst, abs(float(ref_b[int(ids_a[mid + 2])]) - float(oq_lp[0])))
        tol = {"float64": 1e-8, "float32": 1e-3}.get(self.dtype, 0.1)
        if not np.isfinite(worst) or worst > tol:
            raise ScoringError(
                f"model {self.model_row.get('name')!r}: the engine's log-probabilities differ from a "
                f"plain forward pass by {worst:.3g} on a probe (tolerance {tol:g}); this architecture "
                "needs support in psystats (custom attention masks / LM head). "
                + ("Try --packing none." if self.packing == "packed" else "")
            )

"""Optimizer diagnostics (the chapter's 7.4 checklist, made automatic).

Every `trainer.diagnostics_every` steps, at the cost of one copy of the weights on those steps
only: the gradient norm of each parameter group, and for each parameter its weight norm and the
ratio of the update's norm to the weight's norm (healthy training is often near 1e-3; far above
means the LR is too high, far below that the layer barely moves), and the trust ratios that
LAMB and LARS scaled each step by, inside any wrapper (Lookahead) too. Parameters that get no
gradient are named once.
The trainer writes each record to `diagnostics.jsonl` and to TensorBoard under `diag/`.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from optbench.optim import wrapping

log = logging.getLogger("optbench")


class Diagnostics:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, every: int | None):
        self.every = every
        self.optimizer = optimizer
        self.names = {p: n for n, p in model.named_parameters() if p.requires_grad}
        self.checked_for_missing_grads = False
        # The next step that needs `before_step`: the first (to name parameters without gradient),
        # then every `every`-th. Read before calling: on the other steps the call is skipped.
        self.next_due: float = 0
        self._before: dict[nn.Parameter, torch.Tensor] = {}
        self._group_norms: dict[str, torch.Tensor] = {}  # read in `after_step`, with the rest

    def before_step(self, step: int) -> bool:
        """Call after gradients are final (unscaled, clipped), before `optimizer.step()`, on any
        step at or after `next_due` (the steps before it may go without); whether this step is
        recorded (then `after_step` gives the record)."""
        if not self.checked_for_missing_grads:
            self._name_parameters_without_gradient()
        self.next_due = math.inf if self.every is None else (step // self.every + 1) * self.every
        if self.every is None or step % self.every:
            return False
        with torch.no_grad():
            self._keep_before()
        return True

    def _keep_before(self) -> None:
        """The group gradient norms and a copy of the weights, for `after_step`'s record."""
        self._group_norms = {}
        for i, group in enumerate(self.optimizer.param_groups):
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                self._group_norms[group.get("name", f"group{i}")] = norm
        self._before = {p: p.detach().clone() for p in self.names}
        wrapping.request_trust_ratios(self.optimizer)

    def after_step(self) -> dict[str, dict[str, float]] | None:
        """Call after `optimizer.step()`: the record of a diagnostic step (else None)."""
        if not self._before:
            return None
        with torch.no_grad():
            return self._record()

    def _record(self) -> dict[str, dict[str, float]]:
        """The update is the change of each weight since `before_step`. Every number is read from
        the device in one copy: on a GPU each read waits for the device."""
        params = list(self._before)
        weights = torch._foreach_norm([p.detach() for p in params])
        updates = torch._foreach_norm(torch._foreach_sub([p.detach() for p in params], list(self._before.values())))
        ratios = [u / w.clamp_min(1e-12) for u, w in zip(updates, weights)]
        groups = list(self._group_norms.values())
        # float64 holds each dtype's value exactly, and lets parameters of several dtypes share one copy.
        values = torch.stack([t.double() for t in (*groups, *weights, *ratios)]).tolist()
        names = [self.names[p] for p in params]
        record = {"grad_norm": dict(zip(self._group_norms, values[:len(groups)])),
                  "weight_norm": dict(zip(names, values[len(groups):len(groups) + len(params)])),
                  "update_ratio": dict(zip(names, values[len(groups) + len(params):]))}
        trust = {self.names[p]: r for p, r in wrapping.trust_ratios(self.optimizer).items() if p in self.names}
        if trust:
            record["trust_ratio"] = trust
        self._before = {}
        return record

    def _name_parameters_without_gradient(self) -> None:
        missing = [n for p, n in self.names.items() if p.grad is None]
        if missing:
            log.warning("parameters that got no gradient in the first step: %s", ", ".join(missing))
        self.checked_for_missing_grads = True

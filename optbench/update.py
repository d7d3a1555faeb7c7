"""One optimizer update, the same for every run: the trainer's, each GAN network's and lr-find's.

    forward/backward over the micro-batches (autocast; fp16 loss scaling)
    -> unscale -> clip (norm, value, AGC; the norm measured before and after)
    -> non-finite check -> optimizer step -> Hessian refresh -> EMA -> schedule step

`UpdateStep` holds what an update needs and nothing about the loop around it: the trainer
decides which micro-batches make an update and what to log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from optbench.clipping import adaptive_clip_
from optbench.diagnostics import Diagnostics
from optbench.ema import WeightEMA
from optbench.optim.wrapping import hessian_estimators, leaves, refresh_hessian
from optbench.lr_scheduler import cycled_momenta
from optbench.schema import TrainerConfig
from optbench.tasks import Batch

log = logging.getLogger("optbench")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}

LossOf = Callable[[Batch], torch.Tensor]  # the loss of one micro-batch


@dataclass(slots=True)  # one a step: slots make it and its reads cheaper
class StepResult:
    """What one update did. Tensors stay on the device: reading them is the caller's sync."""

    loss: torch.Tensor | None  # the samples' mean loss; None for an update skipped as non-finite
    grad_norm: torch.Tensor | None  # total gradient norm before clipping (when measured)
    grad_norm_post_clip: torch.Tensor | None  # ... and after it (measured with clipping on)
    lrs: list[float]  # each parameter group's LR in this update
    momenta: list[float]  # each group's momentum, when the schedule cycles it (else empty)
    diagnostics: dict[str, dict[str, float]] | None  # the record of a diagnostic step
    samples: int  # in this update's micro-batches (this process's share), skipped or not


def whole(norm: torch.Tensor) -> torch.Tensor:
    """A norm as a plain tensor: under FSDP2 gradients are sharded DTensors, and so is their norm
    until it is reduced over the shards."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


# A context that changes nothing (full precision; the micro-batch that syncs): one object, not one a step.
_AS_IS = nullcontext()


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """Mixed precision as `trainer.precision` says (`32`: none)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return _AS_IS if dtype is None else torch.autocast(device.type, dtype=dtype)


def applied(updates: list[UpdateStep], model: nn.Module, forward_model: nn.Module,
            micro_batches: int) -> dict[str, Any]:
    """What a run did with its settings, read from the objects that do it (summary.json `applied`)."""
    convolutions = [p for p in model.parameters() if p.ndim == 4]
    return {
        "updates": [u.describe() for u in updates],
        "micro_batches_per_update": micro_batches,
        # torch.compile's wrapper, or a module compiled in place (a GAN's networks).
        "compiled": any(isinstance(m, torch._dynamo.eval_frame.OptimizedModule)
                        or getattr(m, "_compiled_call_impl", None) is not None
                        for m in (forward_model, *model.modules())),
        "channels_last": bool(convolutions) and all(
            p.is_contiguous(memory_format=torch.channels_last) for p in convolutions),
    }


class UpdateStep:
    """Updates the parameters of `module` with `optimizer`, as `tc` (the trainer settings) says.

    `module` names the parameters for AGC (which leaves a classifier `head.` alone, as Brock et
    al. do), for warnings and for the Hessian refresh of curvature-based optimizers (SophiaG).
    Optional parts: `scheduler` (stepped once per update), `ema`, `diagnostics`, and `no_sync`,
    a context in which backward passes skip data-parallel gradient communication.
    `foreign_grads`: whether backward passes outside this update (another network's, in a GAN)
    may leave gradients on these parameters between updates, so that an update clears them first.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, tc: TrainerConfig,
                 device: torch.device, scheduler: Any = None, ema: WeightEMA | None = None,
                 diagnostics: Diagnostics | None = None,
                 no_sync: Callable[[], AbstractContextManager[Any]] | None = None, foreign_grads: bool = True):
        self.module, self.optimizer, self.tc, self.device = module, optimizer, tc, device
        self.foreign_grads = foreign_grads
        self.scheduler, self.ema, self.diagnostics, self.no_sync = scheduler, ema, diagnostics, no_sync
        # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "16")
        self.agc_params = [p for n, p in module.named_parameters() if not n.startswith("head.")]
        self.clipped = torch.zeros((), device=device)  # updates whose norm exceeded clip_norm
        self.skipped = 0  # updates dropped under trainer.nonfinite=skip
        # What every update asks, answered once: a step of a small model takes ~1 ms, and each
        # question asked per step (a call into the scaler, the schedule, a wrapper's protocol) a few us.
        self.refreshes_hessian = bool(hessian_estimators(optimizer))
        self.autocast_dtype = AUTOCAST_DTYPES.get(tc.precision)  # None: full precision
        self.scaling = self.scaler.is_enabled()
        self.clipping = (tc.clip_norm, tc.clip_value, tc.clip_agc) != (None, None, None)
        self.skips_nonfinite = tc.nonfinite == "skip"
        self.cycles_momentum = bool(getattr(scheduler, "cycle_momentum", False))

    def autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.device, self.tc.precision)

    def describe(self) -> dict[str, Any]:
        """What this update applies, read from the objects that apply it (summary.json `applied`)."""
        dtype = self.autocast_dtype
        clipping = {"norm": self.tc.clip_norm, "value": self.tc.clip_value, "agc": self.tc.clip_agc}
        return {
            "optimizer": type(self.optimizer).__name__,
            "optimizers_inside": [type(o).__name__ for o in leaves(self.optimizer) if o is not self.optimizer],
            "parameters": sum(p.numel() for p in self._params()),
            "autocast": str(dtype).removeprefix("torch.") if dtype is not None else None,
            "loss_scaling": self.scaler.is_enabled(),
            "clipping": {k: v for k, v in clipping.items() if v is not None},
            "nonfinite": self.tc.nonfinite,
            "ema_updates": self.ema.updates if self.ema is not None else None,
            "diagnostics_every": self.diagnostics.every if self.diagnostics is not None else None,
            "schedule": type(self.scheduler).__name__ if self.scheduler is not None else None,
        }

    def __call__(self, micro_batches: list[Batch], loss_of: LossOf, step: int, measure: bool) -> StepResult:
        """Update number `step` from `micro_batches`; `measure` asks for the gradient norms."""
        if self.foreign_grads:  # another network's backward may have left some (else: every update ends without)
            self.optimizer.zero_grad(set_to_none=True)
        samples = sum(y.shape[0] for _, y in micro_batches)  # shape, not len(): len is a Python-level call
        loss = self._backward(micro_batches, loss_of, samples)
        if self.scaling:
            self.scaler.unscale_(self.optimizer)  # clip and measure true gradients, not scaled ones
        grad_norm = post_clip = None
        if self.clipping or measure or self.skips_nonfinite:  # most steps: nothing to clip or measure
            grad_norm, post_clip = self._clip(measure or self.skips_nonfinite, measure)
        lrs = [g["lr"] for g in self.optimizer.param_groups]  # the rates this update uses
        momenta = cycled_momenta(self.scheduler) if self.cycles_momentum else []
        if self.skips_nonfinite and not torch.isfinite(loss + grad_norm).item():
            self._skip(step, loss)
            return StepResult(None, None, None, lrs, momenta, None, samples)

        diagnosing = (self.diagnostics is not None and step >= self.diagnostics.next_due
                      and self.diagnostics.before_step(step))
        if self.scaling:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        record = self.diagnostics.after_step() if diagnosing else None
        self.optimizer.zero_grad(set_to_none=True)
        # Curvature-based optimizers (SophiaG, also inside a wrapper) re-estimate every k steps.
        if self.refreshes_hessian:
            refresh_hessian(self.optimizer, step, self.module, micro_batches[-1][0])
        if self.ema is not None:
            self.ema.update()
        if self.scheduler is not None:
            self.scheduler.step()  # once per update: schedules count optimizer steps
        return StepResult(loss, grad_norm, post_clip, lrs, momenta, record, samples)

    def _backward(self, micro_batches: list[Batch], loss_of: LossOf, total: int) -> torch.Tensor:
        """Accumulate the gradient of the mean loss of the `total` samples; that loss, detached."""
        weighted = len(micro_batches) > 1  # a single micro-batch is the whole update: no tensor ops to weight it
        loss_sum: torch.Tensor | None = None
        for i, batch in enumerate(micro_batches):
            if self.autocast_dtype is None and self.no_sync is None:
                loss = loss_of(batch)  # full precision in one process: no context to enter (~15 us)
            else:
                with self._sync(i == len(micro_batches) - 1), self.autocast():
                    loss = loss_of(batch)
            if weighted:
                # Weight by the micro-batch's share of samples so that K micro-batches of B give the
                # same gradient as one batch of K*B (and a short last group is scaled by what it had).
                loss = loss * (batch[1].shape[0] / total)
            (self.scaler.scale(loss) if self.scaling else loss).backward()
            loss = loss.detach()
            if loss.dtype != torch.float32:  # a float32 loss (most) is not converted: a call each step
                loss = loss.float()
            loss_sum = loss if loss_sum is None else loss_sum + loss
        return loss_sum

    def _sync(self, last: bool) -> AbstractContextManager[Any]:
        """Data-parallel training syncs gradients only on the micro-batch that steps."""
        return _AS_IS if last or self.no_sync is None else self.no_sync()

    def _clip(self, need_norm: bool, measure: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Clip as configured (norm, then value, then AGC); the total norm before and after."""
        tc, clipping = self.tc, self.clipping
        params = [p for p in self._params() if p.grad is not None]
        grad_norm = None
        if tc.clip_norm is not None:  # clip_grad_norm_ returns the norm it found before clipping
            grad_norm = whole(torch.nn.utils.clip_grad_norm_(params, tc.clip_norm, tc.clip_norm_type))
            self.clipped += grad_norm > tc.clip_norm
        elif need_norm:
            grad_norm = self._norm(params)
        if tc.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, tc.clip_value)
        if tc.clip_agc is not None:
            adaptive_clip_(self.agc_params, tc.clip_agc)
        return grad_norm, self._norm(params) if measure and clipping else None

    def _norm(self, params: list[torch.Tensor]) -> torch.Tensor:
        return whole(torch.nn.utils.get_total_norm([p.grad for p in params], self.tc.clip_norm_type))

    def _params(self) -> Iterator[torch.Tensor]:
        return (p for g in self.optimizer.param_groups for p in g["params"])

    def _skip(self, step: int, loss: torch.Tensor) -> None:
        """`trainer.nonfinite=skip`: drop this update; weights and optimizer state stay as they were."""
        where = "the loss" if not torch.isfinite(loss) else "the gradients of " + ", ".join(
            n for n, p in self.module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        )
        log.warning("step %d: non-finite values in %s; update skipped", step, where)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        self.skipped += 1
        if self.scheduler is not None:
            self.scheduler.step()  # the clock counts the step even though no update was made

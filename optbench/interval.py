"""The logging interval: what the trainer sums between two train lines of metrics.jsonl.

A step only appends its loss (a tensor on the device) to a list: no host-device synchronisation
and no tensor operation per step. The line stacks them once, on the device, for their mean and the
first non-finite one, and reads both.
"""

from __future__ import annotations

import math
import time

import torch

from optbench import distributed
from optbench.metrics_log import per_group
from optbench.update import StepResult, UpdateStep


class Diverged(Exception):
    """The loss stopped being finite: where (`record`, for summary.json's `divergence`)."""

    def __init__(self, step: int, what: str, model: torch.nn.Module):
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        where = f"; non-finite weights now in {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "") if bad else ""
        super().__init__(f"{what} became non-finite at step {step}{where}")
        self.record = {"step": step, "first_nonfinite": what, "nonfinite_params": bad, "message": str(self)}


class TrainInterval:
    """The sums behind one train line; `line()` reads them and starts the next interval."""

    def __init__(self, update: UpdateStep, world_size: int, total_steps: int):
        self.update, self.world_size, self.total_steps = update, world_size, total_steps
        self.device = update.device
        self.steps_taken = 0  # optimizer.step() calls that ran (the fp16 scaler skips some)
        if update.scaler.is_enabled():  # counted only where steps can be skipped: a hook costs every step
            update.optimizer.register_step_post_hook(lambda *_: self._count_step())
        self.reset(first_step=1)

    def _count_step(self) -> None:
        self.steps_taken += 1

    def reset(self, first_step: int) -> None:
        self.start = time.perf_counter()
        self.first_step = first_step
        self.samples = 0
        self.losses: list[torch.Tensor] = []  # the interval's losses, unread (skipped updates have none)
        self.loss_steps: list[int] = []  # ... and the steps they belong to
        if self.update.tc.clip_norm is not None:  # counted (and read) only with norm clipping: a tensor op
            self.update.clipped.zero_()
        self.steps_taken_at_start = self.steps_taken

    def add(self, result: StepResult, step: int, samples: int) -> None:
        if result.loss is not None:
            self.losses.append(result.loss)
            self.loss_steps.append(step)
        self.samples += samples

    def _loss_and_first_nonfinite(self) -> tuple[float, int | None]:
        """The interval's mean loss (over ranks too) and its first step whose loss was non-finite
        (on any rank). The losses come from the device in one copy (on a GPU every read waits for
        the work queued before it) and are summed on the host. Every rank takes part in the
        reductions, with losses or without."""
        losses = torch.stack(self.losses).tolist() if self.losses else []
        loss_sum = sum(losses)
        first = None if math.isfinite(loss_sum) else next(  # a sum is finite only if every loss is
            (step for step, loss in zip(self.loss_steps, losses) if not math.isfinite(loss)), None)
        if self.world_size > 1:  # the mean over ranks, and the first bad step on any of them
            none = self.total_steps + 1  # "no bad step": past the run, so that the minimum picks a real one
            total = distributed.all_reduce(torch.tensor(loss_sum, dtype=torch.float64, device=self.device))
            loss_sum = total.item() / self.world_size
            first = int(distributed.all_reduce(torch.tensor(none if first is None else first, device=self.device),
                                               "min").item())
            first = None if first == none else first
        return (loss_sum / len(losses) if losses else math.nan), first

    def line(self, step: int, result: StepResult, groups: list[dict]) -> tuple[dict[str, float], int | None, float]:
        """(the train line's metrics, the first step with a non-finite loss if any, seconds elapsed)."""
        elapsed = time.perf_counter() - self.start
        steps = step - self.first_step + 1
        loss, first_bad = self._loss_and_first_nonfinite()
        # `lr` is the rate that update number `step` used: the scheduler has moved on since.
        metrics: dict[str, float] = {"loss": loss, **per_group("lr", result.lrs, groups),
                                     **per_group("momentum", result.momenta, groups)}
        update, tc = self.update, self.update.tc
        if result.grad_norm is not None:
            metrics["grad_norm"] = result.grad_norm.item()
        if result.grad_norm_post_clip is not None:
            metrics["grad_norm_post_clip"] = result.grad_norm_post_clip.item()
        if tc.clip_norm is not None and result.grad_norm is not None:
            metrics["clip_fraction"] = update.clipped.item() / steps
        metrics["samples_per_s"] = self.samples / max(elapsed, 1e-9)
        if update.scaler.is_enabled():
            metrics["scaler_skipped"] = steps - (self.steps_taken - self.steps_taken_at_start)
            metrics["loss_scale"] = update.scaler.get_scale()
        if tc.nonfinite == "skip":
            metrics["skipped_steps"] = update.skipped
        return metrics, first_bad, elapsed

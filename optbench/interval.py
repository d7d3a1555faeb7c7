"""The logging interval: what the trainer sums between two train lines of metrics.jsonl.

Losses are summed on the device and the first non-finite one is remembered there too, so that a
step costs no host-device synchronisation; everything is read once, when the line is written.
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
        update.optimizer.register_step_post_hook(lambda *_: self._count_step())
        self.reset(first_step=1)

    def _count_step(self) -> None:
        self.steps_taken += 1

    def reset(self, first_step: int) -> None:
        self.start = time.perf_counter()
        self.first_step = first_step
        self.samples = 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self.update.clipped.zero_()
        self.steps_taken_at_start = self.steps_taken
        # First step of the interval whose loss was non-finite (-1: none), kept on the device.
        self.first_nonfinite = torch.full((), -1, device=self.device)

    def add(self, result: StepResult, step: int, samples: int) -> None:
        if result.loss is not None:
            self.loss_sum += result.loss
            self.loss_count += 1
            first_bad = (self.first_nonfinite < 0) & ~torch.isfinite(result.loss)
            self.first_nonfinite = torch.where(first_bad, step, self.first_nonfinite)
        self.samples += samples

    def line(self, step: int, result: StepResult, groups: list[dict]) -> tuple[dict[str, float], int | None, float]:
        """(the train line's metrics, the first step with a non-finite loss if any, seconds elapsed)."""
        elapsed = time.perf_counter() - self.start
        steps = step - self.first_step + 1
        if self.world_size > 1:  # the mean over ranks, and the first bad step on any of them
            distributed.all_reduce(self.loss_sum)
            self.loss_sum /= self.world_size
            unset = torch.where(self.first_nonfinite < 0, self.total_steps + 1, self.first_nonfinite)
            first = distributed.all_reduce(unset, "min")
            self.first_nonfinite = torch.where(first > self.total_steps, -1, first)
        loss = (self.loss_sum / self.loss_count).item() if self.loss_count else math.nan
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
        first_bad = int(self.first_nonfinite.item())
        return metrics, (first_bad if first_bad >= 0 else None), elapsed

"""The trainer: one class that builds a run from its config, then trains, evaluates and checkpoints.

Reading order: `__init__` builds everything; `fit` is the loop over epochs; `train_step` is one
optimizer update (micro-batches, AMP, clipping, step, schedule); `evaluate` and `state_dict`
are what their names say.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from optbench import checkpoint
from optbench.build import build_data, build_model, build_optimizer, build_scheduler
from optbench.data import Batch
from optbench.errors import ConfigError
from optbench.progress import ProgressBar, print_summary
from optbench.runlog import RunLog, write_summary
from optbench.schema import TrainerConfig
from optbench.tasks import Classification

log = logging.getLogger("optbench")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


class Diverged(Exception):
    """The loss or the gradient stopped being finite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda: no CUDA device is available here; use auto or cpu.")
    return torch.device(name)


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = run_dir
        self.tc = TrainerConfig.from_mapping(OmegaConf.to_container(cfg.trainer, resolve=True))
        self.device = resolve_device(self.tc.device)
        checkpoint.seed_everything(self.tc.seed, self.tc.deterministic)

        self.data = build_data(cfg.data).to(self.device)
        self.model = build_model(cfg.model, self.data).to(self.device)
        self.task = Classification()
        self.optimizer = build_optimizer(cfg.optimizer, self.model)

        accumulation = self.tc.accumulation_steps
        self.steps_per_epoch = math.ceil(self.data.batches_per_epoch / accumulation)
        self.total_steps = self.tc.max_steps or self.tc.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, self.total_steps, self.steps_per_epoch)

        # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.tc.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.tc.precision == "16")

        # Progress counters: everything a resume needs to continue at the same batch.
        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch
        self.batch_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.best: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.last_train_loss = math.nan
        self.train_time = 0.0  # seconds spent in training steps (evaluation excluded)
        self.samples_seen = 0

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to `total_steps`; returns the summary (also written to summary.json)."""
        resumed_from = self._maybe_resume()
        self.runlog = RunLog(self.run_dir, self.optimizer.param_groups[0].get("name", "group0"),
                             self.tc.tensorboard, resume_step=self.step if resumed_from else None)
        self._start = time.perf_counter() - self.train_time
        self._interval_start, self._interval_samples = time.perf_counter(), 0
        self._loss_sum, self._loss_count = torch.zeros((), device=self.device), 0
        status = "completed"
        try:
            with ProgressBar(self.total_steps, self.step, self.tc.progress) as self.progress:
                while self.step < self.total_steps:
                    self._train_epoch()
        except Diverged as e:
            status = "diverged"
            log.warning("run diverged: %s", e)
        except KeyboardInterrupt:
            status = "interrupted"
            log.warning("interrupted at step %d; checkpointing so the same command resumes", self.step)
        if status != "diverged":
            if self.last_val.get("_step") != self.step:
                self.evaluate()
            self.save_checkpoint()
        summary = self.summary(status)
        write_summary(self.run_dir, summary)
        self.runlog.close()
        print_summary(summary, str(self.run_dir))
        return summary

    def _train_epoch(self) -> None:
        """Consume the rest of the current epoch, one optimizer step per group of micro-batches."""
        group: list[Batch] = []
        last_batch = self.data.batches_per_epoch
        for batch in self.data.train_batches(self.tc.seed, self.epoch, start=self.batch_in_epoch):
            group.append(batch)
            self.batch_in_epoch += 1
            # A last, incomplete group at the end of the epoch still steps.
            if len(group) == self.tc.accumulation_steps or self.batch_in_epoch == last_batch:
                measure = (self.step + 1) % self.tc.log_every == 0 or self.step + 1 == self.total_steps
                loss, grad_norm = self.train_step(group, measure)
                self.step += 1
                self._after_step(loss, grad_norm, sum(len(b[1]) for b in group))
                group = []
                if self.step >= self.total_steps:
                    return
        self.epoch += 1
        self.batch_in_epoch = 0

    def train_step(self, micro_batches: list[Batch], measure: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer update from one or more micro-batches; returns (loss, pre-clip grad norm).

        The grad norm is computed only when clipping needs it or `measure` asks for it.
        """
        self.model.train()
        total = sum(len(y) for _, y in micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for batch in micro_batches:
            # Weight by the micro-batch's share of samples so that K micro-batches of B give the
            # same gradient as one batch of K*B (and a short last group is scaled by what it had).
            weight = len(batch[1]) / total
            with self._autocast():
                loss = self.task.training_loss(self.model, batch) * weight
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()

        self.scaler.unscale_(self.optimizer)  # clip and measure true gradients, not scaled ones
        grad_norm = None
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.tc.clip_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.tc.clip_norm)
        elif measure:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.tc.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.tc.clip_value)

        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # Curvature-based optimizers (SophiaG) refresh their Hessian estimate every k steps.
        if hasattr(self.optimizer, "wants_hessian") and self.optimizer.wants_hessian(self.step + 1):
            self.optimizer.update_hessian(self.model, micro_batches[-1][0])
        self.step_lrs = [g["lr"] for g in self.optimizer.param_groups]  # the rates this step used
        self.scheduler.step()  # once per optimizer step: schedules count optimizer steps
        return loss_sum, grad_norm

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _after_step(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, samples: int) -> None:
        self._loss_sum += loss
        self._loss_count += 1
        self._interval_samples += samples
        self.samples_seen += samples
        end_of_epoch = self.batch_in_epoch == self.data.batches_per_epoch
        last = self.step == self.total_steps
        if self.step % self.tc.log_every == 0 or last:
            self._log_train(grad_norm)
        if (self.step % self.tc.eval_every == 0) if self.tc.eval_every else end_of_epoch:
            self._pause(self.evaluate)
            if self.tc.checkpoint_every is None and not last:
                self._pause(self.save_checkpoint)
        if self.tc.checkpoint_every and self.step % self.tc.checkpoint_every == 0 and not last:
            self._pause(self.save_checkpoint)

    def _pause(self, work: Any) -> None:
        """Run `work` outside the training clock, so samples/s measures training alone."""
        self._close_interval()
        work()
        self._interval_start = time.perf_counter()

    def _close_interval(self) -> float:
        now = time.perf_counter()
        elapsed = now - self._interval_start
        self.train_time += elapsed
        self._interval_start = now
        return elapsed

    def _log_train(self, grad_norm: torch.Tensor | None) -> None:
        elapsed = self._close_interval()
        loss = (self._loss_sum / self._loss_count).item()
        # `lr` is the rate that step number `self.step` used: the scheduler has moved on since.
        metrics: dict[str, float] = {"loss": loss, "lr": self.step_lrs[0]}
        for group, lr in zip(self.optimizer.param_groups[1:], self.step_lrs[1:]):
            metrics[f"lr/{group.get('name', 'group')}"] = lr
        if grad_norm is not None:
            norm = grad_norm.item()
            metrics["grad_norm"] = norm
            if self.tc.clip_norm is not None:
                metrics["grad_norm_post_clip"] = min(norm, self.tc.clip_norm)
        metrics["samples_per_s"] = self._interval_samples / max(elapsed, 1e-9)
        self.runlog.write("train", self.step, self._epoch_float(), self._elapsed(), metrics)
        self.progress.update(self.step, self._epoch_float(), metrics)
        self.last_train_loss = loss
        self._loss_sum.zero_()
        self._loss_count = 0
        self._interval_samples = 0
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(metrics["grad_norm"])):
            raise Diverged(f"non-finite loss or gradient at step {self.step} (loss={loss})")

    def _epoch_float(self) -> float:
        return self.epoch + self.batch_in_epoch / self.data.batches_per_epoch

    def _elapsed(self) -> float:
        return time.perf_counter() - self._start

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in self.data.val_batches():
            with self._autocast():
                for name, value in self.task.eval_sums(self.model, batch).items():
                    sums[name] = sums.get(name, 0) + value.double()
            count += len(batch[1])
        metrics = {name: (value / count).item() for name, value in sums.items()}
        self.runlog.write("val", self.step, self._epoch_float(), self._elapsed(), metrics)
        for name, value in metrics.items():
            better = max if self.task.metrics.get(name) == "max" else min
            key = f"val/{name}"
            if math.isfinite(value):
                improved = key not in self.best or better(value, self.best[key]) != self.best[key]
                if improved:
                    self.best[key] = value
                    if name == self.tc.monitor:
                        self._save_best()
        self.last_val = {**metrics, "_step": self.step}
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise Diverged(f"non-finite validation loss at step {self.step}")
        return metrics

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "train_time": self.train_time,
                "samples_seen": self.samples_seen,
                "best": dict(self.best),
            },
            "rng": checkpoint.rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
        self.step, self.epoch = progress["step"], progress["epoch"]
        self.batch_in_epoch = progress["batch_in_epoch"]
        self.train_time, self.samples_seen = progress["train_time"], progress["samples_seen"]
        self.best = dict(progress["best"])
        checkpoint.set_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        checkpoint.save_atomic(self.state_dict(), self.run_dir / "checkpoints" / "last.pt")

    def _save_best(self) -> None:
        state = {"model": self.model.state_dict(), "progress": {"step": self.step, "best": dict(self.best)}}
        checkpoint.save_atomic(state, self.run_dir / "checkpoints" / "best.pt")

    def _maybe_resume(self) -> Path | None:
        """Load the checkpoint that `trainer.resume` names; the path resumed from, if any."""
        if self.tc.resume is None:
            return None
        if self.tc.resume == "auto":
            path = self.run_dir / "checkpoints" / "last.pt"
            if not path.exists():
                log.info("trainer.resume=auto: no checkpoint in %s, starting afresh", self.run_dir)
                return None
        else:
            path = Path(self.tc.resume).expanduser()
        self.load_state_dict(checkpoint.load(path))
        log.info("resumed from %s at step %d", path, self.step)
        return path

    def summary(self, status: str) -> dict[str, Any]:
        final = {"train/loss": self.last_train_loss}
        final.update({f"val/{k}": v for k, v in self.last_val.items() if not k.startswith("_")})
        state_bytes = sum(
            t.numel() * t.element_size()
            for s in self.optimizer.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor)
        )
        return {
            "status": status,
            "steps": self.step,
            "epochs": self._epoch_float(),
            "wall_time_s": self._elapsed(),
            "samples_per_s": self.samples_seen / max(self.train_time, 1e-9),
            "final": final,
            "best": dict(self.best),
            "params": sum(p.numel() for p in self.model.parameters()),
            "optimizer_state_bytes": state_bytes,
            "device": str(self.device),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

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

from optbench import checkpoint, distributed
from optbench.build import build_data, build_model, build_optimizer, build_scheduler, run_length
from optbench.clipping import adaptive_clip_
from optbench.data import Batch
from optbench.diagnostics import Diagnostics
from optbench.ema import WeightEMA
from optbench.errors import ConfigError
from optbench.lr_scaling import scaled_optimizer
from optbench.memory import PeakMemory
from optbench.preemption import Interrupted, StopRequests
from optbench.progress import ProgressBar, print_summary
from optbench.runlog import RunLog, per_group, write_summary
from optbench.scheduled_lr import ScheduledLR, cycled_momenta
from optbench.schema import TrainerConfig
from optbench.tasks import Classification, Task

log = logging.getLogger("optbench")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}


class Diverged(Exception):
    """The loss or the gradient stopped being finite."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device `trainer.device` names; under torchrun, CUDA is this node's GPU number LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda: no CUDA device is available here; use auto or cpu.")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def whole(norm: torch.Tensor) -> torch.Tensor:
    """A norm as a plain tensor: under FSDP2 gradients are sharded DTensors, and so is their norm
    until it is reduced over the shards."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def config_differences(saved: dict[str, Any], cfg: DictConfig) -> str:
    """`: it differs in model.depth (20 -> 32), ...` between a checkpoint's config and `cfg`."""
    current = OmegaConf.to_container(cfg, resolve=True)
    changed = []
    for group in ("model", "data", "optimizer", "params", "scheduler"):
        old, new = saved.get(group, {}), current.get(group, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changed.append(f"{group}.{key} ({old.get(key)} -> {new.get(key)})")
    return f": it differs in {', '.join(changed[:6])}" if changed else ""


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = run_dir
        self.tc = TrainerConfig.from_mapping(OmegaConf.to_container(cfg.trainer, resolve=True))
        # Under torchrun: this process's rank, and how the ranks share the work (none, ddp, fsdp).
        self.world = distributed.world()
        self.strategy = distributed.resolve_strategy(self.tc.strategy)
        if self.strategy != "none":
            distributed.init_process_group()
        self.device = resolve_device(self.tc.device, self.world.local_rank)
        checkpoint.seed_everything(self.tc.seed, self.tc.deterministic)

        memory_format = torch.channels_last if self.tc.channels_last else torch.contiguous_format
        self.data = build_data(cfg.data).to(self.device, memory_format)
        if self.strategy != "none":
            self.data.shard(self.world.rank, self.world.size)  # data.batch_size is the global batch
        self.model = build_model(cfg.model, self.data).to(self.device, memory_format=memory_format)
        # The module that training calls (DDP around the model, or the model sharded by FSDP2),
        # compiled when asked; it shares the model's parameters and state_dicts come from the model.
        self.parallel_model = distributed.wrap(self.model, self.strategy, self.device)
        self.forward_model = torch.compile(self.parallel_model) if self.tc.compile else self.parallel_model
        # Evaluation bypasses DDP (no gradients to sync, and ranks may read unequal shares).
        self.eval_model = self.forward_model if self.strategy != "ddp" else (
            torch.compile(self.model) if self.tc.compile else self.model)
        # The data say what is computed from their batches (loss, metrics, the run's target).
        self.task: Task = getattr(self.data, "task", None) or Classification()
        self.total_steps, self.steps_per_epoch = run_length(self.tc, self.data)
        self.lr_scaling_note = ""  # what optimizer.lr_scaling did to the LR, for the log
        self.optimizer, self.scheduler = self.build_optimization()
        self.ema: WeightEMA | None = None
        if self.tc.ema.decay is not None:
            self.ema = WeightEMA(self.model, self.tc.ema.decay)

        # fp16 needs loss scaling against underflow; bf16 has fp32's range and does not.
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.tc.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.tc.precision == "16")
        # The scaler skips optimizer.step() on overflow; a post-step hook counts the real steps.
        self.optimizer_steps_taken = 0
        self.optimizer.register_step_post_hook(lambda *_: self._count_optimizer_step())

        # AGC leaves the final classifier alone, as Brock et al. do.
        self.agc_params = [p for n, p in self.model.named_parameters() if not n.startswith("head.")]
        self.diagnostics = Diagnostics(self.model, self.optimizer, self.tc.diagnostics_every)
        # A compiled model is not watched op by op (the watch would break its graphs), nor a
        # distributed one (its collectives and FSDP2's sharded tensors are not plain storages).
        self.memory = PeakMemory(self.device, [self.model] + ([self.ema.module] if self.ema is not None else []),
                                 self.optimizers(), watch=not self.tc.compile and self.strategy == "none")

        # Progress counters: everything a resume needs to continue at the same batch.
        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch
        self.batch_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.skipped_steps = 0  # updates skipped for non-finite values (trainer.nonfinite=skip)
        self.best: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.last_train_loss = math.nan
        self.target_reached: dict[str, float] = {}  # step, epoch and time of the first evaluation at target
        self.train_time = 0.0  # seconds spent in training steps (evaluation excluded)
        self.samples_seen = 0
        self.divergence: dict[str, Any] = {}

    def build_optimization(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The optimizer and its scheduler (a hook: a GAN builds a pair per network).

        The optimizer gets the LR after `optimizer.lr_scaling` for the effective batch."""
        node, self.lr_scaling_note = scaled_optimizer(self.cfg.optimizer, self.effective_batch)
        optimizer = build_optimizer(node, self.model, self.cfg.params)
        return optimizer, build_scheduler(self.cfg.scheduler, optimizer, self.total_steps, self.steps_per_epoch)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer of the run (a GAN has two)."""
        return [self.optimizer]

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step over all ranks: data.batch_size (global) x accumulation."""
        return self.data.batch_size * self.tc.accumulation_steps

    def _count_optimizer_step(self) -> None:
        self.optimizer_steps_taken += 1

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to `total_steps`; returns the summary (also written to summary.json)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed_from = self._maybe_resume()
        main = self.world.is_main
        if main:
            per_rank = self.data.batch_size // self.world.size if self.strategy != "none" else self.data.batch_size
            log.info("%d optimizer steps of %d samples (%d micro-batches of %d = %d process(es) x %d) on %s, "
                     "strategy %s", self.total_steps, self.effective_batch, self.tc.accumulation_steps,
                     self.data.batch_size, self.world.size if self.strategy != "none" else 1, per_rank,
                     self.device, self.strategy)
            if self.lr_scaling_note:
                log.info("%s", self.lr_scaling_note)
        # resume=auto without a checkpoint truncates too: lines of a run killed before its first
        # checkpoint describe nothing that this run continues.
        continuing = resumed_from is not None or self.tc.resume == "auto"
        # Only rank 0 writes the run folder; the other ranks compute the same numbers silently.
        self.runlog = RunLog(self.run_dir, self.optimizer.param_groups[0].get("name", "group0"),
                             self.tc.tensorboard, resume_step=self.step if continuing else None, active=main)
        self._start = time.perf_counter() - self.train_time
        self._reset_interval()
        status, checkpoint_at_end = "completed", True
        self.model.train()
        try:
            with StopRequests() as self.stop_requests, ProgressBar(
                self.total_steps, self.step, self.tc.progress and main
            ) as self.progress:
                while self.step < self.total_steps:
                    self._train_epoch()
        except Diverged as e:
            status = "diverged"
            self.divergence["message"] = str(e)
            log.warning("run diverged: %s", e)
        except Interrupted as e:
            status = "interrupted"
            log.warning("%s at step %d; checkpointed: the same command resumes", e, self.step)
        except KeyboardInterrupt:  # a second Ctrl-C, possibly mid-step: no checkpoint of that state
            status, checkpoint_at_end = "interrupted", False
        if status == "completed" and self.last_val.get("_step") != self.step:
            self.evaluate()
        if status != "diverged" and checkpoint_at_end:
            self.save_checkpoint()
        summary = self.summary(status)
        self.runlog.close()
        if main:
            write_summary(self.run_dir, summary)
            print_summary(summary, str(self.run_dir))
        if status == "interrupted":
            self.stop_requests.pass_on()  # in a SLURM job, submitit's handler requeues it now
        return summary

    def _train_epoch(self) -> None:
        """Consume the rest of the current epoch, one optimizer step per group of micro-batches."""
        group: list[Batch] = []
        last_batch = self.data.batches_per_epoch
        position = self.batch_in_epoch
        for batch in self.data.train_batches(self.tc.seed, self.epoch, start=position):
            group.append(batch)
            position += 1
            # A last, incomplete group at the end of the epoch still steps.
            if len(group) == self.tc.accumulation_steps or position == last_batch:
                measure = (self.step + 1) % self.tc.log_every == 0 or self.step + 1 == self.total_steps
                with self.memory.watch():
                    loss, grad_norm = self.train_step(group, measure)
                # Counters move only once the step is done: a checkpoint never skips a batch.
                self.step += 1
                self.batch_in_epoch = position
                self._after_step(loss, grad_norm, sum(len(b[1]) for b in group) * self.world.size)
                group = []
                if self.step >= self.total_steps:
                    return
                # A stop signal takes effect here, between steps, on every rank at the same step.
                self.stop_requests.check(distributed.any_rank)
        self.epoch += 1
        self.batch_in_epoch = 0

    def train_step(self, micro_batches: list[Batch], measure: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One optimizer update from one or more micro-batches; returns (loss, pre-clip grad norm).

        The loss is None for an update skipped under `trainer.nonfinite=skip`. The grad norm is
        computed only when clipping or the non-finite check needs it or `measure` asks for it.
        """
        total = sum(len(y) for _, y in micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            # Weight by the micro-batch's share of samples so that K micro-batches of B give the
            # same gradient as one batch of K*B (and a short last group is scaled by what it had).
            weight = len(batch[1]) / total
            with self._gradient_sync(last=i == len(micro_batches) - 1), self._autocast():
                loss = self.task.training_loss(self.forward_model, batch) * weight
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()

        self.scaler.unscale_(self.optimizer)  # clip and measure true gradients, not scaled ones
        grad_norm = self._clip_gradients(measure or self.tc.nonfinite == "skip")
        if self.tc.nonfinite == "skip" and not torch.isfinite(loss_sum + grad_norm).item():
            self._skip_update(loss_sum)
            return None, None

        self.diagnostics.before_step(self.step + 1)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        record = self.diagnostics.after_step()
        if record is not None:
            self.runlog.write_diagnostics(self.step + 1, record)
        self.optimizer.zero_grad(set_to_none=True)
        # Curvature-based optimizers (SophiaG) refresh their Hessian estimate every k steps.
        if hasattr(self.optimizer, "wants_hessian") and self.optimizer.wants_hessian(self.step + 1):
            self.optimizer.update_hessian(self.model, micro_batches[-1][0])
        if self.ema is not None:
            self.ema.update()
        self.step_lrs = [g["lr"] for g in self.optimizer.param_groups]  # the rates this step used
        self.step_momenta = cycled_momenta(self.scheduler)  # [] unless the schedule cycles momentum
        self.scheduler.step()  # once per optimizer step: schedules count optimizer steps
        return loss_sum, grad_norm

    def _clip_gradients(self, measure: bool) -> torch.Tensor | None:
        """Apply the configured clipping; the total gradient norm before it, when known."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.tc.clip_agc is not None:
            adaptive_clip_(self.agc_params, self.tc.clip_agc)
        grad_norm = None
        if self.tc.clip_norm is not None:
            grad_norm = whole(torch.nn.utils.clip_grad_norm_(params, self.tc.clip_norm, self.tc.clip_norm_type))
            self._clipped += grad_norm > self.tc.clip_norm
        elif measure:
            grad_norm = whole(torch.nn.utils.get_total_norm([p.grad for p in params], self.tc.clip_norm_type))
        if self.tc.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.tc.clip_value)
        return grad_norm

    def _skip_update(self, loss_sum: torch.Tensor) -> None:
        """`trainer.nonfinite=skip`: drop this update; weights and optimizer state stay as they were."""
        where = "the loss" if not torch.isfinite(loss_sum) else "the gradients of " + ", ".join(
            n for n, p in self.model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()
        )
        log.warning("step %d: non-finite values in %s; update skipped", self.step + 1, where)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        self.skipped_steps += 1
        self.step_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.step_momenta = cycled_momenta(self.scheduler)
        self.scheduler.step()  # the clock counts the step even though no update was made

    def _gradient_sync(self, last: bool) -> Any:
        """Data-parallel training syncs gradients only on the micro-batch that steps."""
        return nullcontext() if last else distributed.no_gradient_sync(self.parallel_model, self.strategy)

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ logging

    def _reset_interval(self) -> None:
        """Start a new logging interval: the sums that the next train line averages."""
        self._interval_start = time.perf_counter()
        self._interval_samples = 0
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self._clipped = torch.zeros((), device=self.device)
        self._steps_taken_at_interval_start = self.optimizer_steps_taken
        self._interval_first_step = self.step + 1
        # First step of the interval whose loss was non-finite (-1: none), kept on the device so
        # that finding it costs no synchronisation per step.
        self._first_nonfinite = torch.full((), -1, device=self.device)

    def _after_step(self, loss: torch.Tensor | None, grad_norm: torch.Tensor | None, samples: int) -> None:
        if loss is not None:
            self._loss_sum += loss
            self._loss_count += 1
            first_bad = (self._first_nonfinite < 0) & ~torch.isfinite(loss)
            self._first_nonfinite = torch.where(first_bad, self.step, self._first_nonfinite)
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
        self.train_time += time.perf_counter() - self._interval_start
        work()
        self._interval_start = time.perf_counter()

    def _log_train(self, grad_norm: torch.Tensor | None) -> None:
        elapsed = time.perf_counter() - self._interval_start
        self.train_time += elapsed
        steps = self.step - self._interval_first_step + 1
        if self.strategy != "none":  # the mean over ranks, and the first bad step on any of them
            distributed.all_reduce(self._loss_sum)
            self._loss_sum /= self.world.size
            unset = torch.where(self._first_nonfinite < 0, self.total_steps + 1, self._first_nonfinite)
            first = distributed.all_reduce(unset, "min")
            self._first_nonfinite = torch.where(first > self.total_steps, -1, first)
        loss = (self._loss_sum / self._loss_count).item() if self._loss_count else math.nan
        # `lr` is the rate that step number `self.step` used: the scheduler has moved on since.
        groups = self.optimizer.param_groups
        metrics: dict[str, float] = {"loss": loss, **per_group("lr", self.step_lrs, groups),
                                     **per_group("momentum", self.step_momenta, groups)}
        if grad_norm is not None:
            metrics["grad_norm"] = grad_norm.item()
            if self.tc.clip_norm is not None:
                metrics["grad_norm_post_clip"] = min(metrics["grad_norm"], self.tc.clip_norm)
                metrics["clip_fraction"] = self._clipped.item() / steps
        metrics["samples_per_s"] = self._interval_samples / max(elapsed, 1e-9)
        if self.scaler.is_enabled():
            metrics["scaler_skipped"] = steps - (self.optimizer_steps_taken - self._steps_taken_at_interval_start)
            metrics["loss_scale"] = self.scaler.get_scale()
        if self.tc.nonfinite == "skip":
            metrics["skipped_steps"] = self.skipped_steps
        metrics.update(self.interval_metrics())
        self.runlog.write("train", self.step, self._epoch_float(), self._elapsed(), metrics)
        self.progress.update(self.step, self._epoch_float(), metrics)
        self.last_train_loss = loss
        first_bad = int(self._first_nonfinite.item())
        self._reset_interval()
        if first_bad >= 0:
            self._diverged(first_bad, "the training loss")

    def interval_metrics(self) -> dict[str, float]:
        """More train metrics of the logging interval (a hook: a GAN adds its discriminator's)."""
        return {}

    def _diverged(self, step: int, what: str) -> None:
        """Record where the run stopped being finite, then end it as `diverged`."""
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        where = f"; non-finite weights now in {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "") if bad else ""
        self.divergence = {"step": step, "first_nonfinite": what, "nonfinite_params": bad}
        raise Diverged(f"{what} became non-finite at step {step}{where}")

    def _epoch_float(self) -> float:
        return self.epoch + self.batch_in_epoch / self.data.batches_per_epoch

    def _elapsed(self) -> float:
        return time.perf_counter() - self._start

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the model (and of its EMA, as `ema_<metric>`)."""
        metrics = self._evaluate(self.eval_model)
        if self.ema is not None:
            metrics.update({f"ema_{k}": v for k, v in self._evaluate(self.ema.module).items()})
        # Back to training mode here, once, rather than at every step: `train()` walks every
        # module, about 1 ms per step for ResNet-20 on a CPU.
        self.model.train()
        self.runlog.write("val", self.step, self._epoch_float(), self._elapsed(), metrics)
        if isinstance(self.scheduler, ScheduledLR):
            self.scheduler.observe(metrics)  # plateau steps here, at evaluation
        for name, value in metrics.items():
            mode = self.task.metrics.get(name.removeprefix("ema_"), "min")
            key = f"val/{name}"
            if math.isfinite(value) and (key not in self.best or (value > self.best[key]) == (mode == "max")):
                if value != self.best.get(key):
                    self.best[key] = value
                    if name == self.tc.monitor:
                        self._save_best()
        self.last_val = {**metrics, "_step": self.step}
        target = self.task.target
        if target is not None and not self.target_reached and target.met(metrics):
            self.target_reached = {"step": self.step, "epoch": self._epoch_float(), "time_s": self._elapsed(),
                                   "train_time_s": self.train_time}
            log.info("target %s reached at step %d (%.1f s)", target, self.step, self._elapsed())
        if not math.isfinite(metrics.get("loss", 0.0)):
            self._diverged(self.step, "the validation loss")
        return metrics

    def _evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in self.data.val_batches():
            with self._autocast():
                for name, value in self.task.eval_sums(model, batch).items():
                    sums[name] = sums.get(name, 0) + value.double()
            count += len(batch[1])
        # With ranks: each evaluated its share; add up the sums and counts of all of them.
        totals = distributed.all_reduce(torch.stack([*sums.values(), torch.tensor(count, dtype=torch.float64,
                                                                                 device=self.device)]))
        return {name: (value / totals[-1]).item() for name, value in zip(sums, totals)}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; with ranks, every rank must call it (it gathers). Under FSDP2
        the model and optimizer state are not in it: `save_checkpoint` writes them sharded."""
        sharded = self.strategy == "fsdp"
        state = {
            "model": {} if sharded else self.model.state_dict(),
            "optimizer": {} if sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "train_time": self.train_time,
                "samples_seen": self.samples_seen,
                "skipped_steps": self.skipped_steps,
                "best": dict(self.best),
                "target_reached": dict(self.target_reached),
            },
            "rng": checkpoint.rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        if self.strategy != "none":  # each rank's own generators, in rank order
            state["rng_ranks"] = distributed.gather_objects(state["rng"])
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "sharded" in state:  # FSDP2: the folder of shards that the checkpoint names
            distributed.load_sharded(self.model, self.optimizer, Path(state["sharded"]))
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        progress = state["progress"]
        self.step, self.epoch = progress["step"], progress["epoch"]
        self.batch_in_epoch = progress["batch_in_epoch"]
        self.train_time, self.samples_seen = progress["train_time"], progress["samples_seen"]
        self.skipped_steps = progress["skipped_steps"]
        self.best = dict(progress["best"])
        self.target_reached = dict(progress.get("target_reached", {}))
        ranks = state.get("rng_ranks", [])
        checkpoint.set_rng_state(ranks[self.world.rank] if len(ranks) == self.world.size else state["rng"])

    def save_checkpoint(self) -> None:
        folder = self.run_dir / "checkpoints"
        state = self.state_dict()
        if self.strategy == "fsdp":
            state["sharded"] = distributed.save_sharded(self.model, self.optimizer, folder, self.step)
        if self.world.is_main:
            checkpoint.save_atomic(state, folder / "last.pt")
            if self.strategy == "fsdp":  # keep the shards that last.pt and previous.pt name
                keep = {state["sharded"], *self._sharded_of(folder / checkpoint.PREVIOUS)}
                distributed.remove_unreferenced(folder, keep)

    @staticmethod
    def _sharded_of(path: Path) -> list[str]:
        """The sharded folder that the checkpoint at `path` names, if it names one and loads."""
        try:
            return [checkpoint.load(path)["sharded"]] if path.exists() else []
        except (ConfigError, KeyError):
            return []

    def _save_best(self) -> None:
        model_state = distributed.whole_model_state(self.model, self.strategy)
        if self.world.is_main:
            state = {"model": model_state, "progress": {"step": self.step, "best": dict(self.best)}}
            checkpoint.save_atomic(state, self.run_dir / "checkpoints" / "best.pt")

    def _maybe_resume(self) -> Path | None:
        """Load the checkpoint that `trainer.resume` names; the path resumed from, if any."""
        if self.tc.resume is None:
            return None
        if self.tc.resume == "auto":
            found = checkpoint.newest_complete(self.run_dir / "checkpoints")
            if found is None:
                log.info("trainer.resume=auto: no checkpoint in %s, starting afresh", self.run_dir)
                return None
            path, state = found
        else:
            path = Path(self.tc.resume).expanduser()
            state = checkpoint.load(path)
        if "sharded" in state:  # named relative to the checkpoint, so that a run folder can move
            state["sharded"] = str(path.parent / state["sharded"])
        try:
            self.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConfigError(
                f"trainer.resume={path}: the checkpoint does not fit this configuration"
                f"{config_differences(state.get('config', {}), self.cfg)} ({' '.join(str(e).split())[:200]})."
            ) from None
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
        summary = {
            "status": status,
            "steps": self.step,
            "epochs": self._epoch_float(),
            "wall_time_s": self._elapsed(),
            "samples_per_s": self.samples_seen / max(self.train_time, 1e-9),
            "final": final,
            "best": dict(self.best),
            "params": sum(p.numel() for p in self.model.parameters()),
            "optimizer_state_bytes": state_bytes,
            "effective_batch_size": self.effective_batch,
            "strategy": self.strategy,
            "world_size": self.world.size if self.strategy != "none" else 1,
            "skipped_steps": self.skipped_steps,
            "device": str(self.device),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        peak_memory = self.memory.result()
        if peak_memory is not None:
            summary["peak_memory"] = peak_memory
        if self.task.target is not None:
            summary["target"] = {"goal": str(self.task.target), "reached": bool(self.target_reached),
                                 **self.target_reached}
        if status == "diverged":
            summary["divergence"] = self.divergence
        return summary

"""The trainer: one class that builds a run from its config, then trains, evaluates and checkpoints.

Reading order: `__init__` builds everything; `fit` is the loop over epochs; `train_step` is one
optimizer update (`optbench.update.UpdateStep`: micro-batches, AMP, clipping, step, schedule);
`evaluate` and `state_dict` are what their names say.
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from optbench import checkpoint, distributed
from optbench.build import build_data, build_model, build_optimizer, build_scheduler, run_length
from optbench.data import Batch, batch_groups
from optbench.diagnostics import Diagnostics
from optbench.ema import WeightEMA
from optbench.evaluation import EarlyStopping, ValidationHistory
from optbench.hparams import job_identity
from optbench.interval import Diverged, TrainInterval
from optbench.lr_scaling import scaled_optimizer
from optbench.memory import PeakMemory
from optbench.optim.base import compiled
from optbench.optim.wrapping import state_bytes
from optbench.preemption import Interrupted, StopRequests, resume_command
from optbench.progress import ProgressBar, print_summary
from optbench.run_folder import RunFolder
from optbench.metrics_log import MetricsLog
from optbench.mlflow_log import MlflowRun
from optbench.provenance import provenance
from optbench.lr_scheduler import ScheduledLR
from optbench.schema import TrainerConfig
from optbench.tasks import Classification, Task
from optbench.update import StepResult, UpdateStep, applied, autocast

log = logging.getLogger("optbench")

# trainer.checkpoint_every=null: a checkpoint at an evaluation once this long after the last one.
# A run of seconds then writes one, at its end, instead of one per evaluation; a longer run loses
# at most this much (plus an evaluation interval) to a SIGKILL. A stop signal always checkpoints.
CHECKPOINT_INTERVAL_S = 60.0


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.folder = RunFolder(run_dir)
        self.tc = TrainerConfig.from_mapping(OmegaConf.to_container(cfg.trainer, resolve=True))
        # Under torchrun: this process's rank, and how the ranks share the work (none, ddp, fsdp).
        self.world = distributed.world()
        self.strategy = distributed.resolve_strategy(self.tc.strategy)
        self.processes = self.world.size if self.strategy != "none" else 1  # that train this run together
        if self.strategy != "none":
            distributed.init_process_group()
        # How this process's answer to "stop?" becomes the run's: ranks that train together decide together.
        self.all_ranks_agree = distributed.any_rank if self.processes > 1 else bool
        self.device = distributed.resolve_device(self.tc.device, self.world.local_rank)
        checkpoint.seed_everything(self.tc.seed, self.tc.deterministic)

        memory_format = torch.channels_last if self.tc.channels_last else torch.contiguous_format
        self.data = build_data(cfg.data).to(self.device, memory_format)
        if self.strategy != "none":
            self.data.shard(self.world.rank, self.world.size)  # data.batch_size is the global batch
        self.model = build_model(cfg.model, self.data).to(self.device, memory_format=memory_format)
        # The module that training calls (DDP around the model, or the model sharded by FSDP2),
        # compiled when asked; it shares the model's parameters and state_dicts come from the model.
        self.parallel_model = distributed.wrap(self.model, self.strategy, self.device)
        self.forward_model = compiled(self.parallel_model, "the model") if self.tc.compile else self.parallel_model
        # Evaluation bypasses DDP (no gradients to sync, and ranks may read unequal shares).
        self.eval_model = self.forward_model if self.strategy != "ddp" else (
            compiled(self.model, "the model for evaluation") if self.tc.compile else self.model)
        # The data say what is computed from their batches (loss, metrics, the run's target).
        self.task: Task = getattr(self.data, "task", None) or Classification()
        self.total_steps, self.steps_per_epoch = run_length(self.tc, self.data)
        self.ema = WeightEMA(self.model, self.tc.ema.decay) if self.tc.ema.decay is not None else None
        self.update = self.build_updates()
        self.optimizer, self.scheduler = self.update.optimizer, self.update.scheduler
        self.interval = TrainInterval(self.update, self.processes, self.total_steps)
        # A compiled model is not watched op by op (the watch would break its graphs), nor a
        # distributed one (its collectives and FSDP2's sharded tensors are not plain storages).
        self.memory = PeakMemory(self.device, [self.model] + ([self.ema.module] if self.ema is not None else []),
                                 self.optimizers(), watch=not self.tc.compile and self.strategy == "none")

        # Progress counters: everything a resume needs to continue at the same batch.
        self.step = 0  # optimizer steps done
        self.epoch = 0  # current epoch
        self.batch_in_epoch = 0  # micro-batches of the current epoch already consumed
        stopping = self.tc.early_stopping
        self.history = ValidationHistory(self.task, self.tc.monitor, EarlyStopping(
            self.tc.monitor, self.tc.monitor_mode, stopping) if stopping.patience is not None else None)
        self.last_train_loss = math.nan
        self.train_time = 0.0  # seconds spent in training steps (evaluation excluded)
        self.samples_seen = 0
        self.divergence: dict[str, Any] = {}  # where the run stopped being finite, if it did
        self.provenance = provenance() if self.world.is_main else {}  # how the result was made

    def build_updates(self) -> UpdateStep:
        """The update of the model's parameters (a hook: a GAN builds one per network).

        The optimizer gets the LR after `optimizer.lr_scaling` for the effective batch."""
        node, self.base_lr = scaled_optimizer(self.cfg.optimizer, self.effective_batch)
        optimizer = build_optimizer(node, self.model, self.cfg.params)
        scheduler = build_scheduler(self.cfg.scheduler, optimizer, self.total_steps, self.steps_per_epoch,
                                    self.base_lr.value)
        diagnostics = Diagnostics(self.model, optimizer, self.tc.diagnostics_every)
        # foreign_grads=False: only this update's backward writes gradients, and it leaves none.
        # no_sync: only where ranks sync gradients (one process has none to hold back).
        no_sync = None if self.strategy == "none" else partial(distributed.no_gradient_sync, self.parallel_model,
                                                               self.strategy)
        return UpdateStep(self.model, optimizer, self.tc, self.device, scheduler, self.ema, diagnostics,
                          no_sync=no_sync, foreign_grads=False)

    def updates(self) -> list[UpdateStep]:
        """Every update of the run (a GAN has two: its generator's and its discriminator's)."""
        return [self.update]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [u.optimizer for u in self.updates()]

    def applied(self, updates: list[UpdateStep] | None = None) -> dict[str, Any]:
        """What the run did with its settings (summary.json `applied`); `updates`: those to
        describe instead of the run's own (lr-find's)."""
        return applied(updates or self.updates(), self.model, self.forward_model, self.tc.accumulation_steps)

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step over all ranks: data.batch_size (global) x accumulation."""
        return self.data.batch_size * self.tc.accumulation_steps

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to `total_steps`; returns the summary (also written to summary.json)."""
        self.folder.path.mkdir(parents=True, exist_ok=True)
        resumed_from = self._maybe_resume()
        main = self.world.is_main
        if main:
            log.info("%d optimizer steps of %d samples (%d micro-batches of %d = %d process(es) x %d) on %s, "
                     "strategy %s", self.total_steps, self.effective_batch, self.tc.accumulation_steps,
                     self.data.batch_size, self.processes, self.data.batch_size // self.processes,
                     self.device, self.strategy)
            if self.base_lr.note:
                log.info("%s", self.base_lr.note)
        # resume=auto without a checkpoint truncates too: lines of a run killed before its first
        # checkpoint describe nothing that this run continues.
        continuing = resumed_from is not None or self.tc.resume == "auto"
        # Only rank 0 writes the run folder; the other ranks compute the same numbers silently.
        identity = job_identity(self.cfg)
        mlflow = MlflowRun(self.folder.path, identity.name, OmegaConf.to_container(self.cfg, resolve=True),
                           self.tc.mlflow_tracking_uri, resumed=continuing) if self.tc.mlflow and main else None
        self.metrics_log = MetricsLog(self.folder, self.optimizer.param_groups[0].get("name", "group0"),
                                      self.tc.tensorboard, identity, resume_step=self.step if continuing else None,
                                      active=main, mlflow=mlflow)
        self._start = time.perf_counter() - self.train_time
        self.checkpointed_at = time.perf_counter()
        self.interval.reset(self.step + 1)
        status, checkpoint_at_end = "completed", True
        self.model.train()
        try:
            with StopRequests() as self.stop_requests, ProgressBar(
                self.total_steps, self.step, self.tc.progress and main
            ) as self.progress:
                while self.step < self.total_steps and not self.history.stop:
                    self._train_epoch()
            if self.history.stop:
                log.info("early stopping: %s", self.history.early_stopping.summary()["reason"])
        except Diverged as e:
            status, self.divergence = "diverged", e.record
            log.warning("run diverged: %s", e)
        except Interrupted as e:
            status = "interrupted"
            command = resume_command(self.folder.path)
            log.warning("%s at step %d; checkpointed. %s", e, self.step,
                        f"To resume: {command}" if command else "trainer.resume=auto in this run folder resumes it")
        except KeyboardInterrupt:  # a second Ctrl-C, possibly mid-step: no checkpoint of that state
            status, checkpoint_at_end = "interrupted", False
        except Exception:  # a crash: TensorBoard and MLflow record it as failed, then the caller reports it
            self.metrics_log.close(self.summary("failed"))
            raise
        if status == "completed" and self.history.last_step != self.step:
            self.evaluate()
        if status != "diverged" and checkpoint_at_end:
            self.save_checkpoint()
        summary = self.summary(status)
        self.metrics_log.close(summary)
        if main:
            self.folder.write_summary(summary)
            print_summary(summary, str(self.folder.path))
        if status == "interrupted":
            self.stop_requests.pass_on()  # in a SLURM job, submitit's handler requeues it now
        return summary

    def _train_epoch(self) -> None:
        """Consume the rest of the current epoch, one optimizer step per group of micro-batches."""
        for group, position in batch_groups(self.data, self.tc.seed, self.epoch, self.batch_in_epoch,
                                            self.tc.accumulation_steps):
            step = self.step + 1
            measure = step % self.tc.log_every == 0 or step == self.total_steps
            if self.memory.watching:  # the first steps only: a context entered every step costs ~15 us
                with self.memory.watch():
                    result = self.train_step(group, measure)
            else:
                result = self.train_step(group, measure)
            # Counters move only once the step is done: a checkpoint never skips a batch.
            self.step += 1
            self.batch_in_epoch = position
            self._after_step(result)
            if self.step >= self.total_steps or self.history.stop:
                return
            # A stop signal takes effect here, between steps, on every rank at the same step.
            self.stop_requests.check(self.all_ranks_agree)
        self.epoch += 1
        self.batch_in_epoch = 0

    def train_step(self, micro_batches: list[Batch], measure: bool) -> StepResult:
        """One optimizer update from one or more micro-batches (`measure`: with gradient norms)."""
        return self.update(micro_batches, partial(self.task.training_loss, self.forward_model),
                           self.step + 1, measure)

    def _after_step(self, result: StepResult) -> None:
        samples = result.samples * self.world.size
        self.interval.add(result, self.step, samples)
        self.samples_seen += samples
        if result.diagnostics is not None:
            self.metrics_log.write_diagnostics(self.step, result.diagnostics)
        end_of_epoch = self.batch_in_epoch == self.data.batches_per_epoch
        last = self.step == self.total_steps
        if self.step % self.tc.log_every == 0 or last:
            self._log_train(result)
        if (self.step % self.tc.eval_every == 0) if self.tc.eval_every else end_of_epoch:
            self._pause(self.evaluate)
            if self.tc.checkpoint_every is None and not last and self._checkpoint_due():
                self._pause(self.save_checkpoint)
        if self.tc.checkpoint_every and self.step % self.tc.checkpoint_every == 0 and not last:
            self._pause(self.save_checkpoint)
        if self.history.stop and self.step % self.tc.log_every and not last:
            self._log_train(result)  # early stopping made this the last step: its train line too

    def _pause(self, work: Any) -> None:
        """Run `work` outside the training clock, so samples/s measures training alone."""
        self.train_time += time.perf_counter() - self.interval.start
        work()
        self.interval.start = time.perf_counter()

    def _log_train(self, result: StepResult) -> None:
        metrics, first_bad, elapsed = self.interval.line(self.step, result, self.optimizer.param_groups)
        self.train_time += elapsed
        metrics.update(self.interval_metrics())
        self.metrics_log.write("train", self.step, self._epoch_float(), self._elapsed(), metrics)
        self.progress.update(self.step, self._epoch_float(), metrics)
        self.last_train_loss = metrics["loss"]
        self.interval.reset(self.step + 1)
        if first_bad is not None:
            raise Diverged(first_bad, "the training loss", self.model)

    def interval_metrics(self) -> dict[str, float]:
        """More train metrics of the logging interval (a hook: a GAN adds its discriminator's)."""
        return {}

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
        self.metrics_log.write("val", self.step, self._epoch_float(), self._elapsed(), metrics)
        if isinstance(self.scheduler, ScheduledLR):
            self.scheduler.observe(metrics)  # plateau steps here, at evaluation
        reached = bool(self.history.target_reached)
        when = {"epoch": self._epoch_float(), "time_s": self._elapsed(), "train_time_s": self.train_time}
        if self.history.record(metrics, self.step, when):
            self._save_best()
        if self.history.target_reached and not reached:
            log.info("target %s reached at step %d (%.1f s)", self.task.target, self.step, self._elapsed())
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise Diverged(self.step, "the validation loss", self.model)
        return metrics

    def _evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        return self.task.evaluate(model, self.data.val_batches(), partial(autocast, self.device, self.tc.precision))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; with ranks, every rank must call it (it gathers). Under FSDP2
        the model and optimizer state are not in it: `save_checkpoint` writes them sharded."""
        sharded = self.strategy == "fsdp"
        state = {
            "model": {} if sharded else self.model.state_dict(),
            "optimizer": {} if sharded else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.update.scaler.state_dict(),
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "train_time": self.train_time,
                "samples_seen": self.samples_seen,
                "skipped_steps": self.update.skipped,
                **self.history.state_dict(),
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
        self.update.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        progress = state["progress"]
        self.step, self.epoch = progress["step"], progress["epoch"]
        self.batch_in_epoch = progress["batch_in_epoch"]
        self.train_time, self.samples_seen = progress["train_time"], progress["samples_seen"]
        self.update.skipped = progress["skipped_steps"]
        self.history.load_state_dict(progress)
        ranks = state.get("rng_ranks", [])
        checkpoint.set_rng_state(ranks[self.world.rank] if len(ranks) == self.world.size else state["rng"])

    def _checkpoint_due(self) -> bool:
        """Whether CHECKPOINT_INTERVAL_S has passed since the last checkpoint (decided on every rank
        together: an FSDP checkpoint is written by all)."""
        return distributed.any_rank(time.perf_counter() - self.checkpointed_at >= CHECKPOINT_INTERVAL_S)

    def save_checkpoint(self) -> None:
        self.checkpointed_at = time.perf_counter()
        self.metrics_log.flush()  # the lines up to this step on disk first: a resume continues from both
        state = self.state_dict()
        if self.strategy == "fsdp":
            state["sharded"] = distributed.save_sharded(self.model, self.optimizer, self.folder.checkpoints, self.step)
        if self.world.is_main:
            checkpoint.save_atomic(state, self.folder.last_checkpoint)
            if self.strategy == "fsdp":  # keep the shards that last.pt and previous.pt name
                keep = {state["sharded"], *checkpoint.sharded_folders(self.folder.previous_checkpoint)}
                distributed.remove_unreferenced(self.folder.checkpoints, keep)

    def _save_best(self) -> None:
        model_state = distributed.whole_model_state(self.model, self.strategy)
        if self.world.is_main:
            state = {"model": model_state, "progress": {"step": self.step, "best": dict(self.history.best)}}
            checkpoint.save_atomic(state, self.folder.best_checkpoint)

    def _maybe_resume(self) -> Path | None:
        """Load the checkpoint that `trainer.resume` names; the path resumed from, if any."""
        path = checkpoint.resume_into(self.load_state_dict, self.tc.resume, self.folder, self.cfg)
        if path is not None:
            log.info("resumed from %s at step %d", path, self.step)
        return path

    def summary(self, status: str) -> dict[str, Any]:
        validation = self.history.summary()
        summary = {
            "status": status,
            "steps": self.step,
            "epochs": self._epoch_float(),
            "wall_time_s": self._elapsed(),
            "samples_per_s": self.samples_seen / max(self.train_time, 1e-9),
            "final": {"train/loss": self.last_train_loss, **validation["final"]},
            "best": validation["best"],
            "params": sum(p.numel() for p in self.model.parameters()),
            "optimizer_state_bytes": sum(state_bytes(o) for o in self.optimizers()),
            "effective_batch_size": self.effective_batch,
            "strategy": self.strategy,
            "world_size": self.processes,
            "skipped_steps": self.update.skipped,
            "device": str(self.device),
            "applied": self.applied(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }
        peak_memory = self.memory.result()
        if peak_memory is not None:
            summary["peak_memory"] = peak_memory
        if "target" in validation:
            summary["target"] = validation["target"]
        # Shipped data (the text snapshot) name their bytes' checksum, so runs compare like for like.
        if getattr(self.data, "origin", None) is not None:
            summary["data"] = self.data.origin
        if "early_stopping" in validation:
            summary["early_stopping"] = validation["early_stopping"]
        if status == "diverged":
            summary["divergence"] = self.divergence
        summary["provenance"] = self.provenance
        return summary

"""The training loop every stage shares: micro-batches, accumulation, independent updates of
several models, NaN skips agreed by all ranks, logging, checkpoints and exact resume.

A stage subclass builds its models and data (:meth:`Trainer.build`) and says what one
micro-batch does (:meth:`Trainer.micro_step`: forward, loss and backward of every trainee).
The base class owns everything around it::

    for each optimizer step:
        (micro-batches) -> micro_step -> backward of every trainee
        for each trainee: clip -> its own non-finite flag
        one all-reduce (max) of the K flags, so every rank agrees which updates to skip
        for each trainee: step, or skip (gradients dropped, buffers restored, counted)
        every scheduler steps (skipped or not: all trainees follow the run's global schedule)

A trainee's flag depends only on its own loss and gradients, so a NaN in one never changes
another's update; the skipped trainee still ran its forward, loss collectives and backward on
every rank, so no collective is left unmatched.
"""

from __future__ import annotations

import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from vlcd_dist.config import StageConfig, TrainConfig, dump_yaml, to_dict
from vlcd_dist.data.stream import SKIP_KINDS, ShardLoader
from vlcd_dist.distributed import is_collective_failure
from vlcd_dist.errors import VlcdError
from vlcd_dist.io import write_text
from vlcd_dist.progress import Progress
from vlcd_dist.train.backend import Backend, Trainee, configure_threads, resolve_mixed_precision
from vlcd_dist.train.backends import create_backend
from vlcd_dist.train.checkpoint import Checkpointer, TrainState
from vlcd_dist.train.logging import TBLogger, setup_console_logging
from vlcd_dist.train.optim import create_optimizer, create_scheduler
from vlcd_dist.train.preemption import Preemption
from vlcd_dist.train.preflight import check_stage_inputs

logger = logging.getLogger("vlcd_dist.train")

# (trainee name, optimizer step, loss) -> loss; tests use it to inject faults.
LossHook = Callable[[str, int, torch.Tensor], torch.Tensor]


class TooManySkipsError(VlcdError):
    """A model's update was skipped optim.max_consecutive_skips steps in a row."""


class RankFailureError(VlcdError):
    """A collective failed: another rank exited, or hung past run.collective_timeout_s."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) the same way on every rank."""
    from accelerate.utils import set_seed

    set_seed(seed)


class Trainer(ABC):
    """Base of the training stages; see the module docstring for the step."""

    stage: str = "stage"

    def __init__(self, cfg: TrainConfig, backend: Backend | None = None) -> None:
        self.cfg = cfg
        # Before the process group and any model: a mistyped path fails now, naming its key.
        check_stage_inputs(cfg, self.stage)
        configure_threads(cfg.run.threads, cfg.run.flush_denormal)
        self.backend = backend or create_backend(
            cfg.run.backend,
            mixed_precision=resolve_mixed_precision(cfg.run.mixed_precision),
            cpu=cfg.run.cpu,
            channels_last=cfg.run.channels_last,
            deepspeed_settings=self.deepspeed_settings(),
            collective_timeout_s=cfg.run.collective_timeout_s,
        )
        setup_console_logging(self.backend.is_main)
        self.out = Path(cfg.run.out)
        self.device = self.backend.device
        self.trainees: list[Trainee] = []
        self.schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR] = {}
        self.loader: ShardLoader | None = None
        self.state = TrainState()
        self.loss_hook: LossHook | None = None
        self.tb: TBLogger | None = None
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self.preemption = Preemption(cfg.run.preempt_signal)
        self.preempted = False
        """True when the run stopped early for a preemption signal (checkpoint saved)."""
        self.exit_status = 0
        """Exit status the CLI returns: 0, or preemption.EXIT_NOT_REQUEUED."""
        # Bad samples skipped, and storage reads retried, on all ranks before this process
        # started (from the checkpoint); the loaders count only what this process reads.
        self._skip_base: dict[str, int] = {}
        self._retry_base = 0

    def deepspeed_settings(self) -> dict[str, Any]:
        """What the DeepSpeed backend fills its JSON's "auto" fields from."""
        r, o = self.cfg.run, self.cfg.optim
        return {
            "config": r.deepspeed_config,
            "zero_stage": r.zero_stage,
            "micro_batch": self.cfg.data.batch_size,
            "grad_accum": o.grad_accum_steps,
            "clip_grad_norm": o.clip_grad_norm,
        }

    # -- what a stage provides -------------------------------------------------------------

    @property
    @abstractmethod
    def stage_cfg(self) -> StageConfig:
        """This stage's section of the recipe."""

    @abstractmethod
    def build(self) -> None:
        """Create self.loader and the models; call :meth:`add_trainee` for each trained one."""

    @abstractmethod
    def micro_step(
        self, batch: dict[str, Any], sync: bool, scale: float
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Forward, loss and backward (loss x ``scale``) of every trainee on one micro-batch,
        inside ``self.backend.sync_gradients(trainee, sync)``. Returns, per trainee, its
        detached loss parts ({"loss", ...}) plus any other scalar to log."""

    def summary(self) -> dict[str, Any]:
        """Stage-specific entries of summary.json."""
        return {}

    def finish(self) -> None:  # noqa: B027 - optional hook
        """After the last step: export weights (rank 0 writes). Collective-safe."""

    # -- helpers for stages ----------------------------------------------------------------

    def add_trainee(self, name: str, module: torch.nn.Module, lr: float | None = None) -> Trainee:
        """Give ``module`` its own optimizer and schedule and hand it to the backend."""
        o = self.cfg.optim
        peak = lr or self.stage_cfg.lr or o.lr
        optimizer = create_optimizer(module, peak, o.weight_decay, o.betas, o.eps)
        trainee = self.backend.prepare(name, module, optimizer)
        warmup = self.stage_cfg.warmup_steps
        warmup = o.warmup_steps if warmup is None else warmup
        self.schedulers[name] = create_scheduler(
            optimizer, self.total_steps, warmup, o.min_lr_ratio
        )
        self.trainees.append(trainee)
        self.state.counters.setdefault(name, {"skipped_steps": 0, "consecutive_skips": 0})
        return trainee

    def plan_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of the stage, from steps or epochs x (batches // accumulation)."""
        accum = self.cfg.optim.grad_accum_steps
        per_epoch = batches_per_epoch // accum
        if per_epoch < 1:
            raise ValueError(
                f"an epoch has {batches_per_epoch} batch(es) per rank, fewer than "
                f"optim.grad_accum_steps={accum}; lower data.batch_size or the accumulation"
            )
        self.steps_per_epoch = per_epoch
        if self.stage_cfg.steps:
            return int(self.stage_cfg.steps)
        return max(1, math.ceil(self.stage_cfg.epochs * per_epoch))

    def record(self, name: str, value: torch.Tensor | float) -> None:
        """Add a value to the running means logged at the next logging step."""
        value = torch.as_tensor(value, dtype=torch.float32).detach().to(self.device)
        if name in self._sums:
            self._sums[name] = self._sums[name] + value
            self._counts[name] += 1
        else:
            self._sums[name] = value.clone()
            self._counts[name] = 1

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> TrainState:
        """Build, resume if asked, train to the last step, checkpoint and export; or, on the
        preemption signal, checkpoint at the step every rank agrees on and stop early
        (self.preempted; rank 0 requeues a SLURM job, see vlcd_dist.train.preemption)."""
        # Installed before the build, so that data-loader workers (forked) inherit the handler
        # and a signal during start-up is not lost.
        self.preemption.install()
        try:
            return self._run()
        except Exception as exn:
            if self.backend.world_size > 1 and is_collective_failure(exn):
                raise RankFailureError(self._rank_failure_message(exn)) from exn
            raise
        finally:
            self.preemption.uninstall()

    def _rank_failure_message(self, exn: BaseException) -> str:
        detail = next((line.strip() for line in str(exn).splitlines() if line.strip()), "")
        checkpointer = getattr(self, "checkpointer", None)
        latest = checkpointer.latest() if checkpointer is not None else None
        where = f"the newest complete checkpoint is {latest}" if latest else "no checkpoint yet"
        return (
            f"rank {self.backend.rank}/{self.backend.world_size}: {self.stage} stopped at step "
            f"{self.state.step + 1}: another rank exited or stopped responding (a collective "
            f"failed or waited longer than run.collective_timeout_s="
            f"{self.cfg.run.collective_timeout_s:g} s): {type(exn).__name__}: {detail}. Look "
            f"for the first error in the other ranks' output; {where}: restart with --resume "
            "(torchrun --max-restarts and a requeued SLURM job do)"
        )

    def _run(self) -> TrainState:
        cfg = self.cfg
        seed_everything(cfg.run.seed)
        if self.backend.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(dump_yaml(cfg))
        self.tb = TBLogger(self.out / "tb", cfg.logging.tensorboard and self.backend.is_main)
        self.tb.text("config", "```yaml\n" + dump_yaml(cfg) + "\n```")
        self.build()
        assert self.loader is not None, "build() must set self.loader"
        self.checkpointer = Checkpointer(
            self.out / "checkpoints", self.backend, cfg.checkpoint.keep_last
        )
        if cfg.checkpoint.resume:
            latest = self.checkpointer.latest()
            if latest is not None:
                self.state = self.checkpointer.load(
                    latest, self.stage, self.trainees, self.schedulers
                )
                logger.info("%s: resumed from %s (step %d)", self.stage, latest, self.state.step)
            else:
                logger.info(
                    "%s: --resume given but no complete checkpoint in %s; starting fresh",
                    self.stage,
                    self.checkpointer.folder,
                )
        # A stopped run may have logged steps after its last checkpoint; they are redone now,
        # so TensorBoard drops the old events from here on instead of showing both.
        self.tb.purge_from(self.state.step + 1)
        self._skip_base = dict(self.state.skipped_samples)
        self._retry_base = self.state.data_retries
        try:
            self._loop()
        finally:
            if self.tb is not None:
                self.tb.close()
        if self.preempted:
            # Not finished: no export, no summary.json; the requeued run resumes.
            self.exit_status = self.preemption.requeue(self.backend.is_main)
            return self.state
        self.finish()
        self._write_summary()
        return self.state

    def _batches(self) -> Iterator[list[dict[str, Any]]]:
        """Groups of ``grad_accum_steps`` batches from the data position in self.state on;
        advances the position. Epochs roll over; a partial group at an epoch's end is dropped
        (every rank has the same batch count, so all ranks drop it together)."""
        accum = self.cfg.optim.grad_accum_steps
        loader = self.loader
        assert loader is not None
        while True:
            loader.set_epoch(self.state.epoch)
            usable = (len(loader) // accum) * accum
            if self.state.batch_in_epoch + accum > usable:
                # Saved right after an epoch's last group: nothing of that epoch is left.
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            it = iter(loader)
            try:
                # Resume: the order of an epoch is fixed by (seed, epoch), so skipping the
                # consumed batches puts the stream exactly where the checkpoint left it.
                counted = loader.skipped.copy()
                for _ in range(self.state.batch_in_epoch):
                    next(it)
                # Their bad samples are already in the checkpoint's skip counts (storage
                # retries, real requests of this process, are counted).
                loader.skipped = counted
                while self.state.batch_in_epoch + accum <= usable:
                    group = [next(it) for _ in range(accum)]
                    self.state.batch_in_epoch += accum
                    yield group
            finally:
                del it
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def _loop(self) -> None:
        cfg = self.cfg
        backend = self.backend
        total = self.total_steps
        log_every = cfg.logging.every_steps
        ckpt_every = cfg.checkpoint.every_steps
        progress = Progress(
            total,
            self.stage,
            initial=self.state.step,
            enabled=cfg.logging.progress and backend.is_main,
            every_s=cfg.logging.progress_every_s,
        )
        for trainee in self.trainees:
            trainee.model.train()
        self.on_train_start()
        interval_start = time.perf_counter()
        data_time = 0.0
        steps_in_interval = 0
        images_in_interval = 0
        batches = self._batches()
        speed: float | None = None  # images/s on the progress display (smoothed)
        try:
            while self.state.step < total:
                t0 = time.perf_counter()
                group = next(batches)
                data_time += time.perf_counter() - t0
                images = sum(int(b["image"].shape[0]) for b in group)
                parts = self.train_step(group)
                self.state.step += 1
                self.state.samples += images * backend.world_size
                steps_in_interval += 1
                images_in_interval += images
                if self.state.step % log_every == 0 or self.state.step == total:
                    elapsed = time.perf_counter() - interval_start
                    perf = {
                        "perf/images_per_s": images_in_interval
                        * backend.world_size
                        / max(elapsed, 1e-9),
                        "perf/data_wait_fraction": data_time / max(elapsed, 1e-9),
                        "perf/step_s": elapsed / max(1, steps_in_interval),
                        "perf/epoch": self.state.epoch
                        + self.state.batch_in_epoch / max(1, len(self.loader)),
                    }
                    self._log(perf)
                    interval_start = time.perf_counter()
                    data_time = 0.0
                    steps_in_interval = images_in_interval = 0
                if progress.enabled:
                    step_s = time.perf_counter() - t0
                    rate = images * backend.world_size / max(step_s, 1e-9)
                    speed = rate if speed is None else 0.8 * speed + 0.2 * rate
                    # Read only when shown: a loss read off the GPU waits for the step.
                    progress.update(1, partial(_shown_losses, parts, speed))
                if self.preemption.agreed and self.state.step < total:
                    logger.warning(
                        "%s: preemption signal; checkpointing step %d and stopping",
                        self.stage,
                        self.state.step,
                    )
                    self.preempted = True
                    break  # the checkpoint below saves this step
                if ckpt_every and self.state.step % ckpt_every == 0 and self.state.step < total:
                    self.save_checkpoint()
        finally:
            batches.close()
            progress.close()
        self.save_checkpoint()

    def on_train_start(self) -> None:  # noqa: B027 - optional hook
        """Hook after models are in train mode (e.g. keep frozen parts in eval mode)."""

    def train_step(self, group: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        """One optimizer step of every trainee over a group of micro-batches."""
        backend = self.backend
        accum = len(group)
        # Buffers (batch-norm statistics) are restored when a trainee's update is skipped: a
        # NaN forward must not leave NaN running statistics behind.
        snapshots = {
            t.name: [b.detach().clone() for b in t.module.buffers()] for t in self.trainees
        }
        totals: dict[str, dict[str, torch.Tensor]] = {}
        for i, batch in enumerate(group):
            parts = self.micro_step(batch, sync=i == accum - 1, scale=1.0 / accum)
            for name, values in parts.items():
                acc = totals.setdefault(name, {})
                for key, value in values.items():
                    acc[key] = acc.get(key, 0.0) + value.detach().float() / accum
        clip = self.cfg.optim.clip_grad_norm
        norms = []
        # One flag per trainee, plus this rank's preemption flag last: the same all-reduce
        # tells every rank whether any rank was signalled, so all stop after the same step.
        flags = torch.zeros(len(self.trainees) + 1, device=self.device)
        flags[-1] = float(self.preemption.requested)
        for k, trainee in enumerate(self.trainees):
            norm = backend.clip_grad(trainee, clip)  # None: the engine measures it in step()
            norms.append(norm)
            finite = bool(torch.isfinite(totals[trainee.name]["loss"]))
            finite = finite and (norm is None or bool(torch.isfinite(norm)))
            flags[k] = float(not finite)
        backend.all_reduce(flags, "max")  # one collective: every rank skips the same updates
        self.preemption.agreed = bool(flags[-1].item() > 0)
        for k, trainee in enumerate(self.trainees):
            name = trainee.name
            if flags[k].item() > 0:
                backend.skip(trainee)
                applied = False
            else:
                # An engine that checks gradients itself (DeepSpeed) may still drop the update;
                # its norm is global, so every rank drops it together.
                applied = backend.step(trainee)
            if applied:
                for key, value in totals[name].items():
                    self.record(f"{name}/{_tag(key)}", value)
                norm = norms[k] if norms[k] is not None else backend.grad_norm(trainee)
                if norm is not None:
                    self.record(f"{name}/grad_norm", norm)
            else:
                for buf, saved in zip(trainee.module.buffers(), snapshots[name], strict=True):
                    buf.copy_(saved)
                self.state.counters[name]["skipped_steps"] += 1
                logger.warning(
                    "%s: non-finite loss or gradient at step %d; update skipped",
                    name,
                    self.state.step + 1,
                )
            counters = self.state.counters[name]
            counters["consecutive_skips"] = (
                0 if applied else counters.get("consecutive_skips", 0) + 1
            )
            self.record(f"{name}/lr", self.schedulers[name].get_last_lr()[0])
            self.schedulers[name].step()
        self._check_skips()
        return totals

    def _check_skips(self) -> None:
        """Stop when a trainee was skipped max_consecutive_skips steps in a row. The skip
        decisions are all-reduced, so every rank raises at the same step."""
        limit = self.cfg.optim.max_consecutive_skips
        if limit <= 0:
            return
        stuck = [
            name
            for name, c in self.state.counters.items()
            if c.get("consecutive_skips", 0) >= limit
        ]
        if stuck:
            step = self.state.step + 1
            label = "student" if self.stage in ("predistill", "distill") else "model"
            raise TooManySkipsError(
                f"{self.stage}: {label} {', '.join(map(repr, stuck))} had a non-finite loss or "
                f"gradient {limit} steps in a row (steps {step - limit + 1}-{step}); stopping at "
                f"step {step} (checkpoints so far: {self.out / 'checkpoints'}). Lower the "
                "learning rate, check the data, or raise optim.max_consecutive_skips (0: never "
                "stop)"
            )

    # -- logging, checkpoints --------------------------------------------------------------

    def _local_data_counts(self) -> list[float]:
        """This rank's skipped samples per kind (SKIP_KINDS order), then its storage retries."""
        loader = self.loader
        skipped = loader.skipped if loader is not None else {}
        retries = loader.retries if loader is not None else 0
        return [float(skipped.get(k, 0)) for k in SKIP_KINDS] + [float(retries)]

    def _count_data(self, summed: list[float]) -> None:
        """Store the data counters summed over ranks (see _local_data_counts) in self.state."""
        for j, kind in enumerate(SKIP_KINDS):
            self.state.skipped_samples[kind] = self._skip_base.get(kind, 0) + int(summed[j])
        self.state.data_retries = self._retry_base + int(summed[len(SKIP_KINDS)])

    def _log(self, perf: dict[str, float]) -> None:
        """All-reduce the interval's means and data counters; rank 0 writes them."""
        names = sorted(self._sums)
        local = [self._sums[n] / self._counts[n] for n in names]
        local += [torch.tensor(c, device=self.device) for c in self._local_data_counts()]
        vec = torch.stack([v.reshape(()) for v in local]).to(self.device)
        self.backend.all_reduce(vec, "sum")
        world = self.backend.world_size
        values = {n: float(vec[i]) / world for i, n in enumerate(names)}
        # Per-rank running mean is averaged over ranks; data counters are summed over ranks.
        self._count_data([float(v) for v in vec[len(names) :]])
        for kind in SKIP_KINDS:
            values[f"data/skipped_{kind}"] = self.state.skipped_samples[kind]
        values["data/retries"] = self.state.data_retries
        for trainee in self.trainees:
            values[f"{trainee.name}/skipped_steps"] = self.state.counters[trainee.name][
                "skipped_steps"
            ]
        values.update(perf)
        if self.tb is not None:
            self.tb.scalars(values, self.state.step)
            self.tb.flush()
        self._sums.clear()
        self._counts.clear()

    def count_data(self) -> None:
        """Sum the data counters of all ranks into self.state (collective)."""
        vec = torch.tensor(self._local_data_counts(), dtype=torch.float64, device=self.device)
        self.backend.all_reduce(vec, "sum")
        self._count_data(vec.tolist())

    def save_checkpoint(self) -> Path:
        """Checkpoint the current state (collective)."""
        self.count_data()
        return self.checkpointer.save(
            self.stage,
            self.state,
            self.trainees,
            self.schedulers,
            to_dict(self.cfg),
            dump_yaml(self.cfg),
        )

    def _write_summary(self) -> None:
        if not self.backend.is_main:
            return
        summary = {
            "stage": self.stage,
            "steps": self.state.step,
            "samples": self.state.samples,
            "epoch": self.state.epoch,
            "micro_batches": self.state.step * self.cfg.optim.grad_accum_steps,
            "teacher_forwards": self.state.teacher_forwards,
            "trainees": [t.name for t in self.trainees],
            "counters": self.state.counters,
            # Summed over ranks (by the last save_checkpoint), not rank 0's alone.
            "skipped_samples": dict(self.state.skipped_samples),
            "data_retries": self.state.data_retries,
            "world_size": self.backend.world_size,
            "backend": self.cfg.run.backend,
            # What ran: the recipe's run.mixed_precision, else the launcher's (config.yaml keeps
            # the recipe as it was given).
            "mixed_precision": self.backend.mixed_precision,
            **self.summary(),
        }
        write_text(self.out / "summary.json", json.dumps(summary, indent=1))


def _shown_losses(parts: dict[str, dict[str, torch.Tensor]], speed: float) -> dict[str, str]:
    """What the progress display shows: each trainee's loss under its whole name (students may
    share a prefix: efficientnet_b0 and efficientformer_l1), then images/s."""
    shown = {name: f"{p['loss'].item():.3f}" for name, p in parts.items()}
    shown["img/s"] = f"{speed:.1f}"
    return shown


def _tag(part: str) -> str:
    return "loss" if part == "loss" else part if part == "logit_scale" else f"loss_{part}"

"""The distributed backend behind the trainers: a small interface, implemented with Accelerate.

The trainers never call Accelerate (or, later, DeepSpeed) directly. They hand each trained model
and its optimizer to :meth:`Backend.prepare` and get a :class:`Trainee` back, then drive it with
``backward`` / ``clip_grad`` / ``step`` / ``skip``. Everything a second backend has to provide is
in :class:`Backend`; :mod:`vlcd_dist.train.deepspeed_backend` maps DeepSpeed onto it
(engine.backward / engine.step, with clipping and loss scaling configured in its JSON).

Mixed precision is handled here rather than by ``Accelerator(mixed_precision=...)``: Accelerate
keeps one GradScaler per Accelerator, but every student must have its own loss scaling so that
an fp16 overflow in one never changes another's scale or update (DESIGN.md section 3). Which
precision a run uses is :func:`resolve_mixed_precision`'s answer: the recipe's
``run.mixed_precision``, else the launcher's (``accelerate launch --mixed_precision`` or its
config file), else fp32.

Every backend starts with :func:`init_process_group`: a task that ``srun`` started itself (one
task per GPU, no launcher) takes its rank and rendezvous from SLURM's variables there, so both
backends join one group under ``accelerate launch``, ``torchrun`` and plain ``srun`` alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from vlcd_dist.config.schema import MIXED_PRECISION
from vlcd_dist.distributed import adopt_srun_launch, dist_info, launcher_mixed_precision
from vlcd_dist.errors import ConfigError, VlcdError
from vlcd_dist.io import save_tensors, write_text
from vlcd_dist.train.state_io import load_state, save_state

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

_LAUNCHER_PRECISION = (
    "accelerate launch passes mixed_precision={value} (its --mixed_precision, or mixed_precision "
    "in its --config_file such as launchers/accelerate/1node_8gpu.yaml; the processes see "
    "ACCELERATE_MIXED_PRECISION={value})"
)


def resolve_mixed_precision(recipe: str | None, env: dict[str, str] | None = None) -> str:
    """The precision a training run uses: "no", "bf16" or "fp16".

    ``recipe`` is ``run.mixed_precision``; None (left unset) lets the launcher decide, that is
    ``accelerate launch``'s ``--mixed_precision`` or its config file's ``mixed_precision``
    (:func:`~vlcd_dist.distributed.launcher_mixed_precision`), else "no" (fp32). When both are
    set and differ, ConfigError names both. accelerate passes "no" also when nothing was given,
    so a launcher's "no" never overrides or contradicts the recipe. ``env`` defaults to the
    process environment.
    """
    launcher = launcher_mixed_precision(env)
    if launcher is not None and launcher not in MIXED_PRECISION:
        raise ConfigError(
            _LAUNCHER_PRECISION.format(value=launcher) + f", which vlcd-dist does not support: "
            f"use one of {MIXED_PRECISION} in the launcher, or set run.mixed_precision in the "
            "recipe and leave the launcher's at no"
        )
    if recipe is None:
        return launcher or "no"
    if launcher in (None, "no") or launcher == recipe:
        return recipe
    raise ConfigError(
        f"run.mixed_precision={recipe} in the recipe, but "
        + _LAUNCHER_PRECISION.format(value=launcher)
        + ": make them agree, or leave one of them out (remove run.mixed_precision from the "
        "recipe to use the launcher's, or launch with --mixed_precision no)"
    )


@dataclass
class Trainee:
    """One trained model as the backend holds it.

    name: label in logs and checkpoints. model: what to call in forward (DDP-wrapped when
    distributed). module: the bare model (weights to save/export). optimizer: its own optimizer.
    scaler: its own fp16 GradScaler, or None.
    """

    name: str
    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> Iterator[nn.Parameter]:
        """Trainable parameters of this model."""
        return (p for p in self.module.parameters() if p.requires_grad)


class Backend(ABC):
    """What a trainer needs from a distributed backend."""

    name: str
    """What ``run.backend`` calls it; recorded in every checkpoint it writes."""
    device: torch.device
    rank: int
    local_rank: int
    world_size: int
    mixed_precision: str

    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        """Layout of 4-d tensors (images, conv weights) this run uses."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images [B, 3, H, W] on the device, in the run's memory layout."""
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    @property
    def is_main(self) -> bool:
        """True on the one process that writes logs, reports and checkpoint metadata."""
        return self.rank == 0

    @abstractmethod
    def prepare(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer) -> Trainee:
        """Move ``module`` to the device, wrap it for data parallelism, attach its optimizer."""

    @abstractmethod
    def sync_gradients(self, trainee: Trainee, sync: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward; ``sync=False`` skips the gradient
        all-reduce (gradient accumulation). Collectives inside the loss still run."""

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context of the trained models' forward (nothing in fp32)."""
        dtype = _AMP_DTYPES.get(self.mixed_precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, trainee: Trainee, loss: torch.Tensor) -> None:
        """Backward of ``loss`` (scaled by the trainee's own GradScaler in fp16)."""
        if trainee.scaler is not None:
            loss = trainee.scaler.scale(loss)
        loss.backward()

    def clip_grad(self, trainee: Trainee, max_norm: float | None) -> torch.Tensor | None:
        """Unscale (fp16), clip to ``max_norm`` (None: measure only); returns the pre-clip
        global gradient norm as a 0-dim fp32 tensor, identical on every rank. A backend whose
        engine clips inside its step returns None and reports the norm by :meth:`grad_norm`."""
        if trainee.scaler is not None:
            trainee.scaler.unscale_(trainee.optimizer)
        params = [p for p in trainee.parameters() if p.grad is not None]
        if not params:
            return torch.zeros((), device=self.device)
        limit = float("inf") if max_norm is None else float(max_norm)
        return torch.nn.utils.clip_grad_norm_(params, limit).detach().float()

    def step(self, trainee: Trainee) -> bool:
        """Apply the optimizer update and clear the gradients. Returns False when the engine
        itself dropped the update (a non-finite gradient it found, the same on every rank)."""
        if trainee.scaler is not None:
            trainee.scaler.step(trainee.optimizer)
            trainee.scaler.update()
        else:
            trainee.optimizer.step()
        trainee.optimizer.zero_grad(set_to_none=True)
        return True

    def grad_norm(self, trainee: Trainee) -> torch.Tensor | None:
        """The pre-clip gradient norm of the last :meth:`step`, for backends whose
        :meth:`clip_grad` returns None."""
        return None

    def skip(self, trainee: Trainee) -> None:
        """Drop this step's gradients without an update (a non-finite loss or gradient)."""
        if trainee.scaler is not None:
            # unscale_ recorded the inf; update() lowers this trainee's scale, nobody else's.
            trainee.scaler.update()
        trainee.optimizer.zero_grad(set_to_none=True)

    @abstractmethod
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """All-reduce in place ("sum" or "max") over every rank; returns the tensor."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every rank gets here."""

    def run_on_main(self, what: str, work: Callable[[], Any]) -> None:
        """Run ``work()`` on rank 0 while the other ranks wait, then every rank goes on, or
        every rank raises when it failed: rank 0 its own exception, the others a
        :class:`VlcdError` with rank 0's error text (not a collective timeout later on).

        A collective: every rank must call it. ``what`` says what rank 0 was doing."""
        failure: Exception | None = None
        if self.is_main:
            try:
                work()
            except Exception as exn:  # noqa: BLE001 - re-raised below, after telling the others
                failure = exn
        if self.world_size == 1:
            if failure is not None:
                raise failure
            return
        text = f"{type(failure).__name__}: {failure}" if failure is not None else ""
        text = self._share_main_text(text)
        if failure is not None:
            raise failure
        if text:
            raise VlcdError(
                f"{what} failed on rank 0, so rank {self.rank} stops too: {text} (rank 0's log "
                "has the traceback)"
            )

    def _share_main_text(self, text: str, limit: int = 4000) -> str:
        """Rank 0's ``text`` (UTF-8, at most ``limit`` bytes) on every rank, through two
        all-reduces of integer tensors (the other ranks contribute zeros)."""
        data = text.encode("utf-8")[:limit] if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int32, device=self.device)
        n = int(self.all_reduce(size, "max").item())
        if n == 0:
            return ""
        codes = torch.zeros(n, dtype=torch.int32, device=self.device)
        if data:
            codes[: len(data)] = torch.tensor(list(data), dtype=torch.int32, device=self.device)
        codes = self.all_reduce(codes, "sum")
        return bytes(codes.cpu().tolist()).decode("utf-8", errors="replace")

    #: Folders inside a trainee's checkpoint that another library writes and reads (their
    #: JSON files are not ours to validate); see :meth:`trainee_problems`.
    opaque_dirs: frozenset[str] = frozenset()

    def save_trainee(self, trainee: Trainee, folder: Path) -> None:
        """Write the trainee's model, optimizer and scaler state into ``folder`` (safetensors
        and JSON). Collective: every rank calls it; here rank 0 writes (DDP replicas agree)."""
        state = self.state_dict(trainee)
        if not self.is_main:
            return
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(state["model"], folder / "model.safetensors")
        save_state(state["optimizer"], folder, "optimizer")
        if state.get("scaler"):
            write_text(folder / "scaler.json", json.dumps(state["scaler"]))

    def trainee_problems(self, folder: Path) -> list[str]:
        """What :meth:`save_trainee`'s files lack in a trainee's checkpoint ``folder`` (each
        backend checks its own layout); empty when nothing is missing."""
        if (folder / "optimizer.json").is_file():
            return []
        return [
            "has no optimizer state (optimizer.json); a checkpoint of another backend? resume "
            "with the backend that wrote it"
        ]

    def load_trainee(self, trainee: Trainee, folder: Path) -> None:
        """Restore what :meth:`save_trainee` wrote (every rank reads the same files)."""
        scaler_file = folder / "scaler.json"
        state = {
            "model": load_file(str(folder / "model.safetensors")),
            "optimizer": load_state(folder, "optimizer"),
            "scaler": json.loads(scaler_file.read_text()) if scaler_file.exists() else None,
        }
        self.load_state_dict(trainee, state)

    def export_state(self, trainee: Trainee) -> dict[str, torch.Tensor]:
        """The trainee's full-precision weights (``module.state_dict()`` keys) for export."""
        return trainee.module.state_dict()

    def state_dict(self, trainee: Trainee) -> dict[str, Any]:
        """What a checkpoint keeps of a trainee: model, optimizer and scaler states."""
        return {
            "model": trainee.module.state_dict(),
            "optimizer": trainee.optimizer.state_dict(),
            "scaler": trainee.scaler.state_dict() if trainee.scaler is not None else None,
        }

    def load_state_dict(self, trainee: Trainee, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        trainee.module.load_state_dict(state["model"], strict=True)
        trainee.optimizer.load_state_dict(state["optimizer"])
        if trainee.scaler is not None and state.get("scaler"):
            trainee.scaler.load_state_dict(state["scaler"])

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the process group."""


class AccelerateBackend(Backend):
    """HF Accelerate: DDP over gloo (CPU) or NCCL (GPUs), launched by ``accelerate launch``.

    One code path for both: ``Accelerator(cpu=True)`` when no GPU is usable gives gloo ranks
    (``accelerate launch --multi_gpu --num_processes N`` on CPU), and GPU ranks otherwise.
    """

    name = "accelerate"

    def __init__(
        self,
        mixed_precision: str = "no",
        cpu: bool = False,
        channels_last: bool = False,
        collective_timeout_s: float | None = None,
    ) -> None:
        from accelerate import Accelerator

        use_cpu = cpu or not torch.cuda.is_available()
        if mixed_precision == "fp16" and use_cpu:
            raise VlcdError(
                "mixed precision fp16 (run.mixed_precision, or the launcher's when the recipe "
                "leaves it out) needs a GPU; on CPU use 'bf16' or 'no' (fp32)"
            )
        init_process_group("gloo" if use_cpu else "nccl", collective_timeout_s)
        # Precision is ours (per-trainee scalers), so Accelerate itself runs in fp32 mode.
        handlers = []
        if collective_timeout_s is not None:
            handlers.append(process_group_timeout(collective_timeout_s))
        self.accelerator = Accelerator(
            cpu=use_cpu, mixed_precision="no", kwargs_handlers=handlers or None
        )
        state = self.accelerator.state
        self.device = self.accelerator.device
        self.rank = int(state.process_index)
        self.local_rank = int(state.local_process_index)
        self.world_size = int(state.num_processes)
        self.mixed_precision = mixed_precision
        self.channels_last = channels_last
        self.distributed = self.world_size > 1
        logger.info(
            "accelerate: rank %d/%d on %s (%s), precision %s",
            self.rank,
            self.world_size,
            self.device,
            state.distributed_type,
            mixed_precision,
        )

    def prepare(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer) -> Trainee:
        module.to(self.device, memory_format=self.memory_format)
        model = self.accelerator.prepare_model(module, device_placement=True)
        fix_ddp_buckets(model)
        scaler = None
        if self.mixed_precision == "fp16":
            scaler = torch.amp.GradScaler(self.device.type)
        return Trainee(name=name, model=model, module=module, optimizer=optimizer, scaler=scaler)

    def sync_gradients(self, trainee: Trainee, sync: bool) -> contextlib.AbstractContextManager:
        if sync or not self.distributed:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(trainee.model)

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        dist.all_reduce(tensor, op=ops[op])
        return tensor

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        self.accelerator.end_training()
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def fix_ddp_buckets(model: nn.Module) -> None:
    """Give a DDP model its final gradient buckets now, from the parameter order, so that every
    step of every process reduces its gradients in the same buckets: a resumed run then adds
    them up exactly as the run that never stopped (docs/training.md, "Exact resume").

    Left alone, DDP reduces the first backward of a process in one bucket of all parameters and
    then rebuilds its buckets in the order the gradients became ready. An all-reduce over 3 or
    more ranks adds each element's values in an order that depends on where the element lies in
    its bucket, so the first step after a resume (one bucket) rounds differently from the same
    step of the uninterrupted run (rebuilt buckets); with 2 ranks a + b = b + a, which is why 2
    ranks were exact anyway. Here the reducer rebuilds at once from the parameter order, as DDP
    itself does for a rank that joined early (``torch.distributed.algorithms.Join``), and never
    again: the usual 1 MiB first bucket and 25 MiB ones, fixed by the model alone. Collective:
    every rank wraps its models in the same order. The buckets then follow the forward order,
    so a bucket's all-reduce can start only once the earliest layers' gradients are ready (less
    overlap of communication with the backward on GPUs than DDP's ready order; none on CPU)."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return
    reducer = model.reducer
    if not all(hasattr(reducer, m) for m in ("_push_all_rebuilt_params", "_rebuild_buckets")):
        logger.warning(
            "this torch's DDP reducer cannot rebuild its buckets from the parameter order; "
            "a resumed run on 3 or more ranks may not be bit for bit the uninterrupted run"
        )
        return
    reducer._push_all_rebuilt_params()
    if reducer._rebuild_buckets():
        model._has_rebuilt_buckets = True


def process_group_timeout(seconds: float) -> Any:
    """Accelerate's InitProcessGroupKwargs with this collective timeout: a collective that
    waits longer than ``seconds`` for another rank raises instead of hanging."""
    from accelerate.utils import InitProcessGroupKwargs

    timeout = timedelta(seconds=seconds)
    # Accelerate passes on only the fields that differ from its defaults (600 s), and torch's
    # own default would then apply: nudge an exact 600 s by a microsecond so it is kept.
    if timeout == InitProcessGroupKwargs().timeout:
        timeout += timedelta(microseconds=1)
    return InitProcessGroupKwargs(timeout=timeout)


def init_process_group(dist_backend: str, timeout_s: float | None) -> None:
    """What every backend does before its own set-up: a task that ``srun`` started directly
    (``srun --ntasks-per-node=GPUS python -m vlcd_dist ...``) gets torchrun's variables from
    SLURM's (:func:`~vlcd_dist.distributed.adopt_srun_launch`; a layout that cannot work is
    refused), then a torchrun group that may restart gets a store of its own
    (:func:`init_restartable_group`). Otherwise Accelerate or DeepSpeed create the group from
    the environment, as under torchrun."""
    try:
        found = adopt_srun_launch()
    except ValueError as exn:
        raise VlcdError(str(exn)) from exn
    local_rank = dist_info().local_rank
    if dist_backend == "nccl" and local_rank >= torch.cuda.device_count():
        # Local rank i drives GPU i; `srun --gpus-per-task=1` shows each task only its own.
        raise VlcdError(
            f"local rank {local_rank} needs GPU {local_rank}, but this process sees "
            f"{torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); every rank of a node must see "
            "all its GPUs: under srun use --gpus-per-node (not --gpus-per-task or --gpu-bind)"
        )
    if found:
        logger.info(
            "srun task %s of %s: rendezvous at %s:%s",
            found["RANK"],
            found["WORLD_SIZE"],
            found["MASTER_ADDR"],
            found["MASTER_PORT"],
        )
    init_restartable_group(dist_backend, timeout_s)


def init_restartable_group(dist_backend: str, timeout_s: float | None) -> bool:
    """Create the default process group for a torchrun worker group that may be restarted.

    torchrun (``--max-restarts N``; ``accelerate launch --max_restarts N`` too) hands its
    workers the rendezvous store of its agent (``TORCHELASTIC_USE_AGENT_STORE=True``), and
    that store outlives a restart with the previous attempt's keys still in it. A restarted
    rank that reaches the group set-up first then reads the address a dead rank of the
    previous attempt had published, and gloo fails with "connectFullMesh ... Connection
    refused" (NCCL the same way; pytorch/pytorch issue 135712). The group made here keeps its
    keys in :func:`attempt_store`, fresh for every attempt.

    Returns True when the group was created here; otherwise (no restarts, several nodes, a
    group already there) the backend's own set-up (Accelerate, DeepSpeed) creates it as usual.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    timeout = dist.default_pg_timeout if timeout_s is None else timedelta(seconds=timeout_s)
    store = attempt_store(timeout)
    if store is None:
        return False
    dist.init_process_group(
        dist_backend,
        store=store,
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=timeout,
    )
    logger.info(
        "process group of torchrun attempt %s", os.environ.get("TORCHELASTIC_RESTART_COUNT")
    )
    return True


def attempt_store(timeout: timedelta) -> Any:
    """The torchrun agent's store under a prefix of this restart attempt
    (``TORCHELASTIC_RESTART_COUNT``), or None when torchrun will not restart this worker group
    or does not share its store with it.

    That count is per agent, so the prefix is used only when one agent runs all ranks (one
    node). With several nodes the counts can differ between them (a node whose own worker did
    not fail restarts without counting); there, each launcher's environment needs
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a fresh store every rendezvous round), and rank 0
    warns.
    """
    import torch.distributed as dist

    env = os.environ
    if (
        env.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        or int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) < 1
    ):
        return None
    if int(env.get("GROUP_WORLD_SIZE", "1")) > 1:
        if env.get("RANK") == "0":
            logger.warning(
                "torchrun may restart this %s-node group (--max-restarts %s), but its "
                "launchers share one rendezvous store across restarts, so a restarted group can "
                "connect to addresses of the previous attempt and fail. Set "
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in every node's environment and use "
                "--rdzv-backend c10d, which then gives every attempt a fresh store.",
                env["GROUP_WORLD_SIZE"],
                env["TORCHELASTIC_MAX_RESTARTS"],
            )
        return None
    agent = dist.TCPStore(
        env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"vlcd/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent)


def configure_threads(threads: int | None, flush_denormal: bool) -> None:
    """CPU settings of this process: intra-op threads and subnormal flushing."""
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Several ranks on one CPU host must share its cores rather than oversubscribe them
        # (dist_info: also before a plain srun task has exported torchrun's variables).
        local = dist_info().local_world_size
        if local > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if flush_denormal:
        torch.set_flush_denormal(True)

"""The DeepSpeed backend (``--backend deepspeed``): one DeepSpeed engine per trained model.

Why ``deepspeed.initialize`` directly and not Accelerate's DeepSpeed plugin: Accelerate drives
DeepSpeed through one active plugin per Accelerator, and its ``backward``/``step``, loss scaling
and accumulation are the Accelerator's, built around one trained model. VLCD steps K students in
one optimizer step, each with its own optimizer, loss scaler, clipping and skip decision
(DESIGN.md section 3). Creating K engines ourselves gives each student exactly that, keeps the
frozen teacher outside any engine, and works under every launcher we support (``accelerate
launch``, ``torchrun``, ``srun``), since the engines only need the process group.

How the :class:`~vlcd_dist.train.backend.Backend` calls map onto an engine:

- ``prepare``: ``deepspeed.initialize(model, optimizer=<our AdamW>, config)``; the recipe fills
  the JSON's "auto" fields (micro-batch, accumulation, clipping, bf16/fp16).
- ``sync_gradients(sync)``: ``engine.set_gradient_accumulation_boundary(sync)``.
- ``backward``: ``engine.backward(loss, scale_wrt_gas=False)`` (the trainer already divides by
  the accumulation); fp16 loss scaling is the engine's, one scaler per student.
- ``clip_grad``: ZeRO 1/2 (and bf16/fp16) clip and check gradients inside ``engine.step()``
  (a global norm, so every rank decides alike), so this returns None; with ZeRO 0 in fp32 the
  reduced gradients are on the parameters and are clipped here, as with Accelerate.
- ``step``: ``engine.step()``; False when the engine dropped the update (overflow).
- ``skip``: ``engine.step()`` with our optimizer's own ``step`` made a no-op for that call, so the
  engine's counters, gradient buffers and loss scaler stay consistent while nothing updates.
- checkpoints: ``engine.save_checkpoint`` / ``load_checkpoint`` into the trainee's folder of our
  atomic checkpoint (``<trainee>/engine/``: one optimizer partition per rank under ZeRO), plus a
  plain ``model.safetensors``. DeepSpeed writes with ``torch.save``; we read back only with
  ``torch.load(weights_only=True)`` (the few DeepSpeed types in its files allow-listed), never
  with a full unpickler.
- export: fp32 master weights (``safe_get_full_fp32_param``), so a bf16 run exports the same
  plain fp32 safetensors as the Accelerate backend.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcd_dist.errors import VlcdError
from vlcd_dist.io import save_tensors
from vlcd_dist.train.backend import Backend, Trainee, init_process_group
from vlcd_dist.train.state_io import CheckpointError

logger = logging.getLogger(__name__)

ENGINE_TAG = "engine"
"""Sub-folder of a trainee's checkpoint folder that DeepSpeed's save_checkpoint writes."""


def _use_own_extensions_dir() -> None:
    """Give DeepSpeed's JIT-built ops (on CPU: its shared-memory communication op) a cache
    folder of this Python environment, unless TORCH_EXTENSIONS_DIR is set.

    torch's default folder (``~/.cache/torch_extensions/py311_cu130``) is shared by every
    virtual environment of the user, and the op's build line names the environment's DeepSpeed
    sources: two environments on one machine (a checkout's and a fresh clone's under CI) then
    rebuild it in turn, 1-2 minutes at every DeepSpeed start, the ranks of a torchrun restart
    included (seen here: each start recompiled while a second environment was in use)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return
    from torch.utils.cpp_extension import get_default_build_root

    tag = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
    # torch's version too: its headers are -isystem, so ninja would not rebuild for a new one.
    name = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}-{tag}"
    os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(get_default_build_root(), name)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


class DeepSpeedBackend(Backend):
    """DeepSpeed engines for the trained models over gloo (CPU) or NCCL (GPUs).

    ``deepspeed_settings``: what the trainer derives from the recipe: ``config`` (JSON file or
    None), ``zero_stage``, ``micro_batch``, ``grad_accum``, ``clip_grad_norm``.
    """

    name = "deepspeed"

    def __init__(
        self,
        mixed_precision: str = "no",
        cpu: bool = False,
        channels_last: bool = False,
        deepspeed_settings: dict[str, Any] | None = None,
        collective_timeout_s: float | None = None,
    ) -> None:
        use_cpu = cpu or not torch.cuda.is_available()
        if mixed_precision != "no" and use_cpu:
            # DeepSpeed keeps the whole module in the low precision; on CPU, batch norm then
            # fails on autocast's fp32 activations (seen with DeepSpeed 0.19.8).
            raise VlcdError(
                f"mixed precision {mixed_precision} (run.mixed_precision, or the launcher's when "
                "the recipe leaves it out) with run.backend=deepspeed needs a GPU; on CPU use "
                "run.mixed_precision=no, or the accelerate backend for bf16"
            )
        if use_cpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        _use_own_extensions_dir()
        try:
            import deepspeed
        except ImportError as e:
            raise VlcdError(
                "run.backend=deepspeed needs DeepSpeed: pip install -e '.[deepspeed]'"
            ) from e
        import torch.distributed as dist

        # First: a plain srun task takes its rank from SLURM before the defaults below.
        init_process_group("gloo" if use_cpu else "nccl", collective_timeout_s)
        # A plain `python -m vlcd_dist ...` (one process, no launcher) still needs a group.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if os.environ["WORLD_SIZE"] == "1":
            os.environ.setdefault("MASTER_PORT", _free_port())
        if not dist.is_initialized():
            extra: dict[str, Any] = {}
            if collective_timeout_s is not None:
                from datetime import timedelta

                extra["timeout"] = timedelta(seconds=collective_timeout_s)
            deepspeed.init_distributed(
                dist_backend="gloo" if use_cpu else "nccl", auto_mpi_discovery=False, **extra
            )
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cpu:
            self.device = torch.device("cpu")
        else:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        self.mixed_precision = mixed_precision
        self.channels_last = channels_last
        self.settings = dict(deepspeed_settings or {})
        self.engine_config = self._engine_config()
        logger.info(
            "deepspeed %s: rank %d/%d on %s, ZeRO stage %d, precision %s",
            deepspeed.__version__,
            self.rank,
            self.world_size,
            self.device,
            self.engine_config["zero_optimization"]["stage"],
            mixed_precision,
        )

    # -- configuration ---------------------------------------------------------------------

    def _engine_config(self) -> dict[str, Any]:
        """The DeepSpeed JSON with its "auto" fields filled from the recipe."""
        s = self.settings
        source = s.get("config")
        if source:
            path = Path(source)
            if not path.is_file():
                raise VlcdError(f"run.deepspeed_config: {path} does not exist")
            try:
                config = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise VlcdError(f"run.deepspeed_config: {path} is not valid JSON: {e}") from e
        else:
            source = "the built-in DeepSpeed config"
            config = {"zero_optimization": {"stage": int(s.get("zero_stage", 1))}}
        micro = int(s.get("micro_batch", 1))
        accum = int(s.get("grad_accum", 1))
        clip = s.get("clip_grad_norm")
        owned = {
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": accum,
            "train_batch_size": micro * accum * self.world_size,
            "gradient_clipping": float(clip) if clip else 0.0,
        }
        for key, value in owned.items():
            _fill(config, key, value, source)
        for key, on in (("bf16", self.mixed_precision == "bf16"),
                        ("fp16", self.mixed_precision == "fp16")):  # fmt: skip
            section = config.setdefault(key, {})
            _fill(section, "enabled", on, source, f"{key}.enabled")
        if self.mixed_precision == "bf16":
            # Without it a bf16 ZeRO step would apply a non-finite gradient.
            config["bf16"].setdefault("check_grad_overflow", True)
        stage = config.setdefault("zero_optimization", {}).setdefault("stage", 0)
        if stage == 0 and self.mixed_precision == "no":
            # Plain fp32 data parallelism: we clip (Backend.clip_grad, the same max norm), as
            # DeepSpeed's own fp32 clipping fails on 0-dim parameters (a logit scale).
            config["gradient_clipping"] = 0.0
        # Our optimizer is torch's AdamW; ZeRO partitions its state like any other.
        config["zero_allow_untested_optimizer"] = True
        config.setdefault("steps_per_print", 10**9)
        return config

    @property
    def engine_clips(self) -> bool:
        """Whether the engine clips and checks gradients inside step() (ZeRO, bf16, fp16)."""
        return self.engine_config["zero_optimization"]["stage"] > 0 or self.mixed_precision != "no"

    # -- Backend ---------------------------------------------------------------------------

    def prepare(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer) -> Trainee:
        import deepspeed
        import torch.distributed as dist

        module.to(self.device, memory_format=self.memory_format)
        # DeepSpeed 0.19 broadcasts each parameter as p.view(uint8), which fails on 0-dim ones
        # (a student's logit scale). Its broadcast skips parameters marked ds_optim_param (no
        # other effect without offloading), so those are marked and broadcast here instead.
        scalars = [p for p in module.parameters() if p.dim() == 0]
        for p in scalars:
            p.ds_optim_param = True
        try:
            engine, *_ = deepspeed.initialize(
                model=module,
                optimizer=optimizer,
                config=json.loads(json.dumps(self.engine_config)),  # the engine edits its copy
                dist_init_required=False,
            )
        finally:
            for p in scalars:
                del p.ds_optim_param
        for p in scalars:
            dist.broadcast(p.data, 0)
        return Trainee(name=name, model=engine, module=engine.module, optimizer=optimizer)

    def sync_gradients(self, trainee: Trainee, sync: bool) -> contextlib.AbstractContextManager:
        trainee.model.set_gradient_accumulation_boundary(sync)
        return contextlib.nullcontext()

    def backward(self, trainee: Trainee, loss: torch.Tensor) -> None:
        trainee.model.backward(loss, scale_wrt_gas=False)

    def clip_grad(self, trainee: Trainee, max_norm: float | None) -> torch.Tensor | None:
        if self.engine_clips:
            return None  # clipped to gradient_clipping (= max_norm) inside engine.step()
        return super().clip_grad(trainee, max_norm)

    def step(self, trainee: Trainee) -> bool:
        trainee.model.step()
        return bool(trainee.model.was_step_applied())

    def grad_norm(self, trainee: Trainee) -> torch.Tensor | None:
        norm = trainee.model.get_global_grad_norm()
        if norm is None:
            return None
        return torch.as_tensor(float(norm), dtype=torch.float32)

    def skip(self, trainee: Trainee) -> None:
        optimizer = trainee.optimizer
        own = vars(optimizer).get("step")
        optimizer.step = lambda *args, **kwargs: None  # type: ignore[method-assign]
        try:
            trainee.model.step()
        finally:
            if own is None:
                del optimizer.step
            else:
                optimizer.step = own  # type: ignore[method-assign]

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        dist.all_reduce(tensor, op=ops[op])
        return tensor

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def export_state(self, trainee: Trainee) -> dict[str, torch.Tensor]:
        # Collective under ZeRO: each rank holds a slice of the fp32 masters.
        from deepspeed.utils import safe_get_full_fp32_param

        state = dict(trainee.module.state_dict())
        for name, param in trainee.module.named_parameters():
            full = safe_get_full_fp32_param(param) if param.requires_grad else None
            state[name] = (full if full is not None else param).detach().float()
        return state

    opaque_dirs = frozenset({ENGINE_TAG})

    def save_trainee(self, trainee: Trainee, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        weights = self.export_state(trainee)
        trainee.model.save_checkpoint(str(folder), tag=ENGINE_TAG, save_latest=False)
        if self.is_main:
            save_tensors(weights, folder / "model.safetensors")

    def trainee_problems(self, folder: Path) -> list[str]:
        if (folder / ENGINE_TAG).is_dir():
            return []
        return [
            f"has no DeepSpeed state ({ENGINE_TAG}/); a checkpoint of another backend? resume "
            "with the backend that wrote it"
        ]

    def load_trainee(self, trainee: Trainee, folder: Path) -> None:
        engine = trainee.model
        if not (folder / ENGINE_TAG).is_dir():
            raise CheckpointError(
                f"{folder} has no DeepSpeed state ({ENGINE_TAG}/): it was written by another "
                "backend; resume with the backend that wrote it"
            )
        loader = engine.checkpoint_engine
        loader.load = functools.partial(_load_weights_only, loader.load)
        try:
            path, _ = engine.load_checkpoint(
                str(folder),
                tag=ENGINE_TAG,
                load_optimizer_states=True,
                load_lr_scheduler_states=False,
                load_module_strict=True,
            )
        finally:
            del loader.load
        if path is None:
            raise CheckpointError(f"DeepSpeed could not load {folder / ENGINE_TAG}")

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _fill(config: dict, key: str, value: Any, source: str, label: str | None = None) -> None:
    """Set a field the recipe owns: "auto" or absent takes the recipe's value; any other value
    must agree with it, so the recipe and the JSON never silently differ."""
    current = config.get(key, "auto")
    if current == "auto":
        config[key] = value
    elif current != value:
        raise VlcdError(
            f"{source}: {label or key} is {current!r} but the recipe gives {value!r}; set it to "
            '"auto" in the JSON (the recipe decides) or change the recipe'
        )


def _safe_globals() -> list[Any]:
    """The DeepSpeed types its checkpoint files hold, allowed for weights_only loading."""
    allowed: list[Any] = []
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler

        allowed += [LossScaler, DynamicLossScaler]
    with contextlib.suppress(ImportError):
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed.append(fragment_address)
    with contextlib.suppress(ImportError):
        from deepspeed.runtime.zero.config import ZeroStageEnum

        allowed.append(ZeroStageEnum)
    return allowed


def _load_weights_only(original: Any, path: str, map_location: Any = None, **kwargs: Any) -> Any:
    """DeepSpeed's checkpoint read, with torch's restricted unpickler instead of the full one."""
    del original, kwargs
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)

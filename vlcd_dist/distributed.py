"""Where this process sits in a distributed run, and the collectives the library uses.

One function, :func:`dist_info`, answers "which rank am I" for every launcher we support, so
that nothing else in the code base reads launcher environment variables. Collectives live in
small named functions below it so tests can call and monkeypatch them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

# Each launcher exports the same facts under its own names. The first name present wins, in the
# order: torchrun / accelerate / deepspeed (they share torchrun's names), then Open MPI. A task
# that srun started itself gets torchrun's names derived from SLURM's (srun_launch_env); SLURM's
# own names are not ranks otherwise (under `srun accelerate launch` a SLURM task is a whole node,
# and a batch script sees the allocation's task count while it is one process).
_RANK = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_LOCAL_RANK = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
_WORLD = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_LOCAL_WORLD = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")
_NODE = ("GROUP_RANK", "NODE_RANK", "CROSS_RANK", "SLURM_NODEID")
_NUM_NODES = ("NNODES", "CROSS_SIZE", "SLURM_NNODES")
# The scheduler's name of this node. It can differ from the host name (and on a test cluster
# that runs several nodes on one machine, it is the only thing that tells them apart).
_NODE_NAME = ("SLURMD_NODENAME",)


@dataclass(frozen=True)
class DistInfo:
    """Position of this process in the job.

    rank: global rank, 0..world_size-1.
    local_rank: rank among the processes of this node (selects the GPU).
    world_size: number of processes in the job.
    local_world_size: processes on this node.
    node_rank: index of this node, 0..num_nodes-1.
    num_nodes: nodes in the job.
    hostname: this machine's host name, for log lines.
    node_name: the scheduler's name of this node (SLURMD_NODENAME under SLURM), else the host
        name; for log lines.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    hostname: str = ""
    node_name: str = ""

    @property
    def is_main(self) -> bool:
        """True on the one process that writes logs, reports and checkpoints."""
        return self.rank == 0


def _first_int(env: dict[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            # SLURM_NTASKS_PER_NODE may read "2(x3)"; the leading count is the per-node figure.
            head = value.split("(")[0].split(",")[0]
            try:
                return int(head)
            except ValueError as exn:
                raise ValueError(
                    f"environment variable {name}={value!r} is not an integer; "
                    "unset it or fix the launcher that sets it"
                ) from exn
    return default


def dist_info(env: dict[str, str] | None = None) -> DistInfo:
    """Rank, local rank, world size and node of this process.

    Reads the variables set by torchrun, ``accelerate launch``, the ``deepspeed`` launcher,
    ``mpirun`` and SLURM's ``srun`` (for a task srun started itself, :func:`srun_launch_env`).
    With ``env`` left out, the process environment is read and, when ``torch.distributed`` is
    initialised, its rank and world size are authoritative; an explicit ``env`` is read alone.
    Without any launcher this is a single process (rank 0 of 1).
    """
    from_process = env is None
    env = dict(os.environ) if env is None else env
    env = {**srun_launch_env(env, check=False), **env}
    rank = _first_int(env, _RANK, 0)
    world = _first_int(env, _WORLD, 1)
    if from_process and torch_dist.is_available() and torch_dist.is_initialized():
        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
    local_rank = _first_int(env, _LOCAL_RANK, 0)
    local_world = _first_int(env, _LOCAL_WORLD, 0) or world
    num_nodes = _first_int(env, _NUM_NODES, 0) or max(1, world // max(local_world, 1))
    node = _first_int(env, _NODE, -1)
    if node < 0:
        node = rank // max(local_world, 1)
    if not 0 <= rank < world:
        raise ValueError(
            f"rank {rank} is outside world size {world}; check RANK/WORLD_SIZE "
            "(or the SLURM/MPI equivalents) set by your launcher"
        )
    hostname = socket.gethostname()
    node_name = next((env[n].strip() for n in _NODE_NAME if env.get(n, "").strip()), hostname)
    return DistInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=node,
        num_nodes=num_nodes,
        hostname=hostname,
        node_name=node_name,
    )


SRUN_COMMAND = "srun --ntasks-per-node=GPUS_PER_NODE python -m vlcd_dist STAGE ..."
"""The one-task-per-GPU launch (open_clip's style), for messages."""


def srun_port(job_id: int) -> int:
    """The rendezvous port of a SLURM job: 20000 + job id modulo 20000, so that two jobs sharing
    a node do not collide (slurm/vlcd.sh derives VLCD_PORT the same way)."""
    return 20000 + job_id % 20000


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``node[03-05,9],gpu1`` -> ``node03``,
    ``rack[1-2]-n[7-8]`` -> ``rack1-n7`` (what ``scontrol show hostnames | head -n 1`` prints)."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    head = nodelist[:end].strip()
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], head)


def _tasks_per_node(text: str) -> list[int]:
    """``2(x3),1`` (SLURM_STEP_TASKS_PER_NODE) -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
        if match is None:
            raise ValueError(f"SLURM_STEP_TASKS_PER_NODE={text!r} is not SLURM's count format")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def srun_launch_env(env: dict[str, str] | None = None, check: bool = True) -> dict[str, str]:
    """torchrun's variables for a process that ``srun`` started as one task of a job step.

    ``srun --ntasks-per-node=GPUS python -m vlcd_dist ...`` (open_clip's style: one task per
    GPU, no launcher) sets only SLURM's names. For a task of a step of more than one task, with
    none of torchrun's names set (RANK, WORLD_SIZE, LOCAL_RANK) and no Open MPI launcher, this
    returns RANK=SLURM_PROCID, WORLD_SIZE=SLURM_STEP_NUM_TASKS, LOCAL_RANK=SLURM_LOCALID,
    LOCAL_WORLD_SIZE (this node's entry of SLURM_STEP_TASKS_PER_NODE), MASTER_ADDR (the first
    host of SLURM_STEP_NODELIST) and MASTER_PORT (:func:`srun_port` of SLURM_JOB_ID); a
    MASTER_ADDR or MASTER_PORT already set is kept. Otherwise (no srun step, one task, a
    launcher's names present) it returns {}. A batch script is not a step (no SLURM_STEP_ID):
    there ``python -m vlcd_dist`` is one process, whatever ``--ntasks`` says.

    With ``check``, a launcher started by several srun tasks on one node (``srun
    --ntasks-per-node=8 accelerate launch ...``: every task starts its own group of ranks) is
    refused with a ValueError that shows both supported commands, and so is a step without a node
    list or with a malformed task count; without ``check`` (for :func:`dist_info`) nothing is
    raised. ``env`` defaults to the process environment.
    """
    env = dict(os.environ) if env is None else env
    if not env.get("SLURM_STEP_ID", "").strip():
        return {}
    # The step's counts, never the allocation's (SLURM_NTASKS): a step may use fewer tasks.
    tasks = _first_int(env, ("SLURM_STEP_NUM_TASKS",), 1)
    node = _first_int(env, ("SLURM_NODEID",), 0)
    try:
        per_node = _tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", ""))
    except ValueError:
        if check:
            raise
        per_node = []  # dist_info must not fail on an odd environment: one task here
    here = per_node[node] if node < len(per_node) else 1
    launched = any(env.get(n, "").strip() for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if launched:
        if check and here > 1 and env.get("TORCHELASTIC_RUN_ID", "").strip():
            raise ValueError(
                f"srun started {here} tasks on node {env.get('SLURMD_NODENAME', node)} and each "
                "runs a launcher (accelerate launch / torchrun) that starts its own ranks; use "
                "either one task per node running the launcher (srun --ntasks-per-node=1 "
                "accelerate launch ..., as slurm/vlcd.sh does) or no launcher, one task per GPU: "
                f"{SRUN_COMMAND}"
            )
        return {}
    if tasks <= 1 or env.get("OMPI_COMM_WORLD_SIZE", "").strip():
        return {}
    job = _first_int(env, ("SLURM_JOB_ID",), 0)
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    out = {
        "RANK": str(_first_int(env, ("SLURM_PROCID",), 0)),
        "WORLD_SIZE": str(tasks),
        "LOCAL_RANK": str(_first_int(env, ("SLURM_LOCALID",), 0)),
        "LOCAL_WORLD_SIZE": str(here),
        "MASTER_ADDR": env.get("MASTER_ADDR", "").strip() or first_host(nodelist),
        "MASTER_PORT": env.get("MASTER_PORT", "").strip() or str(srun_port(job)),
    }
    if not out["MASTER_ADDR"]:
        if not check:
            del out["MASTER_ADDR"]  # the ranks are known; only a process group needs it
            return out
        raise ValueError(
            "srun gave this task no node list (SLURM_STEP_NODELIST); export MASTER_ADDR, the "
            "host of rank 0, before srun"
        )
    return out


def adopt_srun_launch() -> dict[str, str]:
    """Export :func:`srun_launch_env` into this process's environment (before a process group is
    created), so that torch.distributed, Accelerate and DeepSpeed see a torchrun worker.
    Returns what was set; raises ValueError for a launch layout that cannot work."""
    found = srun_launch_env(dict(os.environ))
    os.environ.update(found)
    return found


def launcher_mixed_precision(env: dict[str, str] | None = None) -> str | None:
    """The mixed precision ``accelerate launch`` asks for: its ``--mixed_precision`` or the
    ``mixed_precision`` of its ``--config_file``, which it passes to the processes as
    ACCELERATE_MIXED_PRECISION (lower-cased). None without one. accelerate also passes "no" when
    neither was given, so "no" cannot tell an explicit choice from the default."""
    env = dict(os.environ) if env is None else env
    value = env.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    return value or None


def slurm_requeue_id(env: dict[str, str] | None = None) -> str | None:
    """The id ``scontrol requeue`` takes for this SLURM batch job, or None outside one.

    An array task is named ``ARRAYJOB_TASK`` (SLURM_ARRAY_JOB_ID, SLURM_ARRAY_TASK_ID), which
    requeues that task only; any other job by SLURM_JOB_ID. ``env`` defaults to the process
    environment.
    """
    env = dict(os.environ) if env is None else env
    job = env.get("SLURM_JOB_ID", "").strip()
    if not job:
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID", "").strip(), env.get("SLURM_ARRAY_TASK_ID", "")
    if array and task.strip():
        return f"{array}_{task.strip()}"
    return job


# ---------------------------------------------------------------------------------------------
# Collectives. Every function degrades to the identity for a world of one (torch.distributed not
# available or not initialised) so that library code calls them unconditionally. The losses call
# them through this module's namespace, so tests can monkeypatch them to simulate other ranks.
# ---------------------------------------------------------------------------------------------


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return (
        torch_dist.is_available()
        and torch_dist.is_initialized()
        and torch_dist.get_world_size() > 1
    )


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when not distributed."""
    if not is_distributed():
        return 0, 1
    return torch_dist.get_rank(), torch_dist.get_world_size()


# gloo raises plain RuntimeErrors, e.g. "[.../gloo/transport/tcp/pair.cc:545] Read error ...:
# Connection reset by peer" when a peer process is gone and "[.../gloo/transport/tcp/
# unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation to complete" past the
# process-group timeout (measured with torch 2.14); NCCL's errors are DistBackendErrors.
_PEER_FAILURE_TEXT = (
    "gloo/transport",
    "Connection reset by peer",
    "Connection closed by peer",
    "Timed out waiting",
)


def is_collective_failure(exn: BaseException) -> bool:
    """True when ``exn`` comes from a collective that failed because another rank exited,
    lost its connection, or did not answer within the process-group timeout."""
    dist_error = getattr(torch_dist, "DistError", None)
    if dist_error is not None and isinstance(exn, dist_error):
        return True
    return isinstance(exn, RuntimeError) and any(t in str(exn) for t in _PEER_FAILURE_TEXT)


def _collective_device(like: torch.Tensor | None = None) -> torch.device:
    # NCCL only moves CUDA tensors and gloo only CPU ones (for all_gather), so small bookkeeping
    # tensors must live where the backend expects them, whatever device the caller's data is on.
    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if like is not None and like.device.type != "cuda":
        return like.device
    return torch.device("cpu")


def gather_sizes(n: int, like: torch.Tensor | None = None) -> list[int]:
    """Local batch size of every rank, in rank order.

    ``n`` is this rank's count; ``like`` (optional) is a tensor whose device hints where the
    bookkeeping tensor should live. Returns ``[n]`` when not distributed.
    """
    if not is_distributed():
        return [int(n)]
    device = _collective_device(like)
    world = torch_dist.get_world_size()
    mine = torch.tensor([int(n)], dtype=torch.long, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    torch_dist.all_gather(everyone, mine)
    return [int(t.item()) for t in everyone]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All-gather ``x`` [n_local, ...] along dim 0 when ranks hold different n_local.

    all_gather needs equal shapes, so every rank pads to max(sizes) and the padding is cut off
    afterwards. Returns [sum(sizes), ...] in rank order, detached (no autograd).
    """
    world = len(sizes)
    longest = max(sizes)
    x = x.detach().contiguous()
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = [torch.empty_like(x) for _ in range(world)]
    torch_dist.all_gather(parts, x)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)], dim=0)


def _check_sizes(x: torch.Tensor, sizes: list[int]) -> tuple[int, int]:
    rank, world = rank_and_world()
    if len(sizes) != world:
        raise ValueError(
            f"sizes has {len(sizes)} entries but the world has {world} ranks; pass the result "
            "of gather_sizes() or leave sizes=None"
        )
    if sizes[rank] != x.shape[0]:
        raise ValueError(
            f"sizes[{rank}]={sizes[rank]} but this rank's tensor has {x.shape[0]} rows; pass the "
            "result of gather_sizes(x.shape[0]) or leave sizes=None"
        )
    return rank, world


def gather_no_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` [n_r, ...] into [sum_r n_r, ...], without autograd.

    For tensors that carry no gradient (frozen teacher features, cached text anchors). ``sizes``
    (from :func:`gather_sizes`) saves one collective when the caller already knows them; ranks
    may hold different n_r. Returns ``x.detach()`` when not distributed, so that a world of one
    sees the same autograd graph as a larger one.
    """
    if not is_distributed():
        return x.detach()
    sizes = gather_sizes(x.shape[0], like=x) if sizes is None else list(sizes)
    _check_sizes(x, sizes)
    return _all_gather_padded(x, sizes)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the summed gradient of its slice.

    Every rank's loss may depend on every rank's rows, so the gradient of rank r's rows is the sum
    over ranks of d(loss_q)/d(rows_r): an all-reduce (sum) of the full gradient, then the local
    slice. (reduce_scatter would move less data but gloo does not implement it.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop], None, None


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` [n_r, ...] into [sum_r n_r, ...], keeping autograd.

    In backward, the gradient reaching this rank's ``x`` is the sum over all ranks of the
    gradient of their losses with respect to this rank's rows (an all-reduce in backward, so
    every rank must run backward through it). Ranks may hold different n_r. Returns ``x``
    itself when not distributed.
    """
    if not is_distributed():
        return x
    sizes = gather_sizes(x.shape[0], like=x) if sizes is None else list(sizes)
    rank, _ = _check_sizes(x, sizes)
    return _GatherWithGrad.apply(x, sizes, rank)


def signal_number(name: str) -> signal.Signals:
    """The signal called ``name`` ("SIGUSR1", "USR1", "sigterm", ...); ValueError otherwise."""
    text = name.strip().upper()
    if not text.startswith("SIG"):
        text = "SIG" + text
    sig = getattr(signal, text, None)
    if not isinstance(sig, signal.Signals) or text.startswith("SIG_"):
        raise ValueError(f"unknown signal {name!r}; use a name such as SIGUSR1 or SIGTERM")
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(f"{text} cannot be caught; use e.g. SIGUSR1 or SIGTERM")
    return sig

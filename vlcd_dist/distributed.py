"""Where this process sits in a distributed run, and the collectives the library uses.

One function, :func:`dist_info`, answers "which rank am I" for every launcher we support, so
that nothing else in the code base reads launcher environment variables. Collectives live in
small named functions below it so tests can call and monkeypatch them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch.distributed as torch_dist

# Each launcher exports the same facts under its own names. The first name present wins, in the
# order: torchrun / accelerate / deepspeed (they share torchrun's names), Open MPI, then SLURM
# (srun sets SLURM_* for every task, so it must come last: under `srun accelerate launch` the
# SLURM task is a whole node, not a rank).
_RANK = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")
_LOCAL_RANK = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
_WORLD = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
_LOCAL_WORLD = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE")
_NODE = ("GROUP_RANK", "NODE_RANK", "CROSS_RANK", "SLURM_NODEID")
_NUM_NODES = ("NNODES", "CROSS_SIZE", "SLURM_NNODES")


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
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    hostname: str = ""

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
    ``mpirun`` and SLURM's ``srun``. With ``env`` left out, the process environment is read and,
    when ``torch.distributed`` is initialised, its rank and world size are authoritative; an
    explicit ``env`` is read alone. Without any launcher this is a single process (rank 0 of 1).
    """
    from_process = env is None
    env = dict(os.environ) if env is None else env
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
    return DistInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=node,
        num_nodes=num_nodes,
        hostname=socket.gethostname(),
    )

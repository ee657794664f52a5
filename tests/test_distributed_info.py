"""dist_info understands every launcher's variables."""

import pytest

from vlcd_dist.distributed import dist_info


def test_single_process_default():
    info = dist_info({})
    assert (info.rank, info.world_size, info.local_rank, info.node_rank) == (0, 1, 0, 0)
    assert info.is_main


def test_torchrun_and_accelerate():
    env = {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
    }
    info = dist_info(env)
    assert (info.rank, info.local_rank, info.world_size, info.node_rank, info.num_nodes) == (
        5,
        1,
        8,
        1,
        2,
    )
    assert not info.is_main


def test_slurm_srun_one_task_per_gpu():
    env = {
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4",
        "SLURM_NTASKS_PER_NODE": "2(x2)",
        "SLURM_NODEID": "1",
        "SLURM_NNODES": "2",
    }
    info = dist_info(env)
    assert (info.rank, info.local_rank, info.world_size, info.local_world_size) == (3, 1, 4, 2)
    assert (info.node_rank, info.num_nodes) == (1, 2)


def test_launcher_variables_win_over_slurm():
    # `srun accelerate launch`: SLURM sees one task per node, torchrun's names are the ranks.
    env = {
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
        "SLURM_NODEID": "1",
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
    }
    info = dist_info(env)
    assert (info.rank, info.world_size, info.node_rank) == (3, 4, 1)


def test_open_mpi():
    env = {
        "OMPI_COMM_WORLD_RANK": "2",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    }
    info = dist_info(env)
    assert (info.rank, info.world_size, info.local_rank, info.node_rank) == (2, 4, 0, 1)


def test_bad_values_are_explained():
    with pytest.raises(ValueError, match="RANK='x'"):
        dist_info({"RANK": "x"})
    with pytest.raises(ValueError, match="outside world size"):
        dist_info({"RANK": "4", "WORLD_SIZE": "2"})

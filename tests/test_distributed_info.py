"""dist_info understands every launcher's variables."""

import os

import pytest

from vlcd_dist.distributed import (
    dist_info,
    first_host,
    launcher_mixed_precision,
    srun_launch_env,
    srun_port,
)

# What srun gives task 3 of `srun --nodes 2 --ntasks-per-node 2 ...` (job 11, step 0), as printed
# on the local test cluster; the batch script of such a job sees the allocation's names only.
SRUN_TASK = {
    "SLURM_JOB_ID": "11",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    "SLURM_STEP_NODELIST": "node[1-2]",
    "SLURM_JOB_NODELIST": "node[1-2]",
    "SLURMD_NODENAME": "node2",
}
BATCH_SCRIPT = {
    "SLURM_JOB_ID": "12",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS": "4",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_JOB_NODELIST": "node[1-2]",
}


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
    info = dist_info(SRUN_TASK)
    assert (info.rank, info.local_rank, info.world_size, info.local_world_size) == (3, 1, 4, 2)
    assert (info.node_rank, info.num_nodes, info.node_name) == (1, 2, "node2")


def test_srun_task_gets_torchruns_variables():
    assert srun_launch_env(SRUN_TASK) == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "node1",
        "MASTER_PORT": str(20000 + 11),
    }
    # A rendezvous the user exported (open_clip's sbatch scripts do) is kept.
    mine = srun_launch_env(dict(SRUN_TASK, MASTER_ADDR="10.0.0.7", MASTER_PORT="29400"))
    assert (mine["MASTER_ADDR"], mine["MASTER_PORT"]) == ("10.0.0.7", "29400")
    assert srun_port(41234) == 20000 + 1234
    # A step of uneven tasks per node: this node's own count.
    uneven = dict(SRUN_TASK, SLURM_STEP_TASKS_PER_NODE="3,1", SLURM_NODEID="1", SLURM_PROCID="3")
    assert srun_launch_env(uneven)["LOCAL_WORLD_SIZE"] == "1"


def test_batch_script_and_single_task_are_one_process():
    # The batch script runs once, on the first node, whatever --ntasks says.
    assert srun_launch_env(BATCH_SCRIPT) == {}
    info = dist_info(BATCH_SCRIPT)
    assert (info.rank, info.world_size, info.local_world_size) == (0, 1, 1)
    one = dict(SRUN_TASK, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0")
    one.update(SLURM_STEP_NUM_TASKS="1", SLURM_NTASKS="1", SLURM_STEP_TASKS_PER_NODE="1")
    assert srun_launch_env(one) == {}
    assert dist_info(one).world_size == 1


def test_srun_around_a_launcher_is_the_launchers():
    # `srun --ntasks-per-node=1 accelerate launch ...` (slurm/vlcd.sh): torchrun's names stand.
    worker = dict(SRUN_TASK, SLURM_STEP_TASKS_PER_NODE="1(x2)", SLURM_STEP_NUM_TASKS="2")
    worker.update(RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", TORCHELASTIC_RUN_ID="x")
    assert srun_launch_env(worker) == {}
    # mpirun inside an allocation: Open MPI's names, not srun's.
    assert srun_launch_env(dict(SRUN_TASK, OMPI_COMM_WORLD_SIZE="4")) == {}


def test_several_launchers_per_node_are_refused():
    # `srun --ntasks-per-node=2 accelerate launch ...`: each task starts its own ranks.
    worker = dict(SRUN_TASK, RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", TORCHELASTIC_RUN_ID="x")
    with pytest.raises(ValueError) as exn:
        srun_launch_env(worker)
    text = str(exn.value)
    assert "srun started 2 tasks on node node2" in text
    assert "srun --ntasks-per-node=1 accelerate launch" in text
    assert "srun --ntasks-per-node=GPUS_PER_NODE python -m vlcd_dist" in text
    # dist_info (log lines, data sharding) only reads; the backends refuse.
    assert dist_info(worker).rank == 1


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("node[1-2]", "node1"),
        ("gpu-a[017-020,033],gpu-b5", "gpu-a017"),
        ("rack[3,1]-n[07-08]", "rack3-n07"),
        ("login2", "login2"),
        ("x1,x2", "x1"),
    ],
)
def test_first_host_of_a_node_list(nodelist: str, first: str):
    assert first_host(nodelist) == first


def test_launcher_mixed_precision():
    assert launcher_mixed_precision({}) is None
    assert launcher_mixed_precision({"ACCELERATE_MIXED_PRECISION": "BF16"}) == "bf16"


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


def test_a_rank_without_its_gpu_is_refused(monkeypatch):
    # `srun --gpus-per-task=1`: local rank 1 sees one GPU (its own, as cuda:0).
    import torch

    from vlcd_dist.errors import VlcdError
    from vlcd_dist.train.backend import init_process_group

    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(VlcdError, match=r"local rank 1 needs GPU 1, but this process sees 1 "):
        init_process_group("nccl", None)


def test_srun_tasks_of_a_node_share_its_cores(monkeypatch):
    # Trainers set threads before the backend exports torchrun's variables: 2 tasks on this node.
    import torch

    from vlcd_dist.train.backend import configure_threads

    for name in [n for n in os.environ if n.startswith(("SLURM_", "OMPI_"))]:
        monkeypatch.delenv(name)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SRUN_TASK.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    configure_threads(None, flush_denormal=False)
    assert calls == [4]


def test_dist_info_never_fails_on_an_odd_srun_environment() -> None:
    """dist_info is called by logging and progress: a step without a node list or with a task
    count SLURM would not write still gives the ranks (only setting up a group refuses it)."""
    from vlcd_dist.distributed import srun_launch_env

    odd = {
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_ID": "5",
        "SLURM_STEP_TASKS_PER_NODE": "two",
        "SLURM_NTASKS": "8",  # the allocation's count: not the step's
    }
    info = dist_info(odd)
    assert (info.rank, info.world_size, info.local_rank) == (1, 2, 0)
    with pytest.raises(ValueError, match="SLURM_STEP_TASKS_PER_NODE='two'"):
        srun_launch_env(odd)
    fine = {**odd, "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
    assert "MASTER_ADDR" not in srun_launch_env(fine, check=False)
    with pytest.raises(ValueError, match="no node list"):
        srun_launch_env(fine)

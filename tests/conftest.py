"""Shared fixtures: small shard sets and tiny runs written once per session, the SLURM cluster
check, an offline environment, and the ``multiproc`` marker of tests that launch ranks. Plain
helpers are in helpers.py."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    DISTILL_STEPS,
    TINY_RECIPE,
    accelerate_launch,
    cluster_problem,
    distill_args,
    run_cli,
)

# Tests never touch the network: no model hub, no telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

LAUNCHING_FIXTURES = {"accelerate_distill"}
"""Fixtures that start ranks: a test needing one (even through another fixture) is multiproc."""

LAUNCHERS = ("accelerate.commands.launch", "torch.distributed.run", "torchrun", "srun", "sbatch")
"""What a command line starts ranks with (argv entries); only multiproc tests may run one, or a
stage as a process of its own (``python -m vlcd_dist STAGE``: a rank, if only one)."""


def _launcher(argv: list[str]) -> str | None:
    """The launcher ``argv`` starts ranks with, or None."""
    names = [os.path.basename(a) for a in argv]
    found = next((x for x in LAUNCHERS if x in names), None)
    if found is None and any(names[i : i + 2] == ["-m", "vlcd_dist"] for i in range(len(names))):
        return "python -m vlcd_dist"
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # item.fixturenames is the whole closure, so a fixture built on accelerate_distill counts.
    for item in items:
        if LAUNCHING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.multiproc)
    # Slow tests are opt-in: VLCD_SLOW=1, or a -m expression that names them.
    if os.environ.get("VLCD_SLOW") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a slow test: run with VLCD_SLOW=1 or -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_launch_outside_multiproc(request: pytest.FixtureRequest, monkeypatch) -> None:
    """Fail a test that starts ranks without the multiproc marker, so that `make test-fast`
    (``-m "not multiproc ..."``) never launches any: the marker cannot silently go missing."""
    if request.node.get_closest_marker("multiproc") or request.node.get_closest_marker("slurm"):
        return
    original = subprocess.Popen

    class Guarded(original):  # type: ignore[misc, valid-type]
        def __init__(self, args, *rest, **kwargs) -> None:
            argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
            launcher = _launcher([os.fsdecode(a) for a in argv])
            if launcher is not None:
                raise AssertionError(
                    f"{request.node.nodeid} starts {launcher} but is not marked multiproc "
                    "(pytest.mark.multiproc, or a fixture in conftest.LAUNCHING_FIXTURES)"
                )
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Guarded)


@pytest.fixture(scope="session")
def placenta_shards(tmp_path_factory) -> Path:
    """48 synthetic placenta samples at 128x96, 6 per shard (train and test files)."""
    out = tmp_path_factory.mktemp("shards") / "placenta"
    assert (
        run_cli(
            f"shards placenta --synthetic 48 --image-size 128x96 --shard-size 6 --out {out} --workers 2 --quiet"
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def natural_shards(tmp_path_factory) -> Path:
    """64 procedural natural images at 48 px in 8 shards of 8."""
    out = tmp_path_factory.mktemp("shards") / "natural"
    assert (
        run_cli(
            f"shards natural --source synthetic --count 64 --image-size 48 --shard-size 8 --out {out} --workers 2 --quiet"
        )
        == 0
    )
    return out


# --- training stages (tests/test_train_*.py) --------------------------------------------------


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory, placenta_shards, natural_shards) -> Path:
    """A recipe for seconds-long runs: tiny teacher and students at 32 px on the test shards."""
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_RECIPE.format(placenta=placenta_shards, natural=natural_shards))
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, tiny_recipe) -> dict[str, Path]:
    """train-teacher then predistill (in-process, one rank) on the tiny recipe; their folders."""
    root = tmp_path_factory.mktemp("pipeline")
    teacher = root / "teacher" / "export" / "teacher.safetensors"
    assert run_cli(f"train-teacher --config {tiny_recipe} --out {root / 'teacher'}") == 0
    assert (
        run_cli(
            f"predistill --config {tiny_recipe} --out {root / 'predistill'} "
            f"--set teacher.checkpoint={teacher}"
        )
        == 0
    )
    return {"root": root, "teacher": teacher, "predistill": root / "predistill"}


@pytest.fixture(scope="session")
def distill_sets(tiny_pipeline) -> list[str]:
    """--set overrides of a tiny distill from the session's teacher and predistilled students."""
    return [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        f"distill.init_from={tiny_pipeline['predistill']}",
        f"distill.steps={DISTILL_STEPS}",
    ]


@pytest.fixture(scope="session")
def accelerate_distill(tmp_path_factory, tiny_recipe, distill_sets) -> Path:
    """The tiny distill on 2 gloo ranks with the Accelerate backend (the reference run)."""
    out = tmp_path_factory.mktemp("dist") / "distill"
    accelerate_launch(*distill_args(tiny_recipe, out, distill_sets))
    return out


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Skip (or, under CI, fail) before any fixture spends time training."""
    problem = cluster_problem()
    # Nodes finishing a job (state "completing") are idle again within seconds.
    deadline = time.monotonic() + 30
    while problem is not None and "completing" in problem and time.monotonic() < deadline:
        time.sleep(2)
        problem = cluster_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI must run the SLURM acceptance test, but: {problem}", pytrace=False)
    pytest.skip(problem)

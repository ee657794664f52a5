"""Which mixed precision a training run uses: the recipe's run.mixed_precision, else the
launcher's (accelerate launch --mixed_precision or its config file), else fp32; a conflict is
refused naming both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, rank_env

from vlcd_dist.config import load_config
from vlcd_dist.errors import ConfigError
from vlcd_dist.train.backend import resolve_mixed_precision
from vlcd_dist.train.stages import create_stage

LAUNCHERS = REPO / "launchers" / "accelerate"


def launcher_env(value: str | None) -> dict[str, str]:
    """What accelerate launch passes its processes for ``--mixed_precision value``."""
    return {} if value is None else {"ACCELERATE_MIXED_PRECISION": value}


@pytest.mark.parametrize(
    "recipe, launcher, used",
    [
        (None, None, "no"),  # neither: fp32
        (None, "bf16", "bf16"),  # the recipe leaves it to the launcher
        (None, "fp16", "fp16"),
        (None, "no", "no"),
        ("bf16", None, "bf16"),  # torchrun, srun: no launcher setting
        ("bf16", "no", "bf16"),  # accelerate's "no" is also its default: the recipe decides
        ("bf16", "bf16", "bf16"),
        ("no", "no", "no"),
    ],
)
def test_recipe_else_launcher_else_fp32(recipe, launcher, used) -> None:
    assert resolve_mixed_precision(recipe, launcher_env(launcher)) == used


@pytest.mark.parametrize("recipe, launcher", [("fp16", "bf16"), ("no", "bf16"), ("bf16", "fp16")])
def test_conflict_names_both_settings(recipe, launcher) -> None:
    with pytest.raises(ConfigError) as exn:
        resolve_mixed_precision(recipe, launcher_env(launcher))
    text = str(exn.value)
    assert f"run.mixed_precision={recipe} in the recipe" in text
    assert f"accelerate launch passes mixed_precision={launcher}" in text
    assert f"ACCELERATE_MIXED_PRECISION={launcher}" in text
    assert "--config_file" in text and "remove run.mixed_precision from the recipe" in text


def test_unsupported_launcher_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="mixed_precision=fp8 .*does not support"):
        resolve_mixed_precision(None, launcher_env("fp8"))


def test_trainer_uses_the_launchers_precision(monkeypatch, tiny_recipe) -> None:
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = load_config(tiny_recipe, [])
    assert cfg.run.mixed_precision is None  # the tiny recipe leaves it out
    trainer = create_stage(cfg, "train-teacher")
    try:
        assert trainer.backend.mixed_precision == "bf16"
    finally:
        trainer.backend.close()
    cfg.run.mixed_precision = "fp16"
    with pytest.raises(ConfigError, match="run.mixed_precision=fp16 in the recipe"):
        create_stage(cfg, "train-teacher")


def _launcher_precision(path: Path) -> str:
    """What accelerate launch passes for this config file (absent: its default, "no")."""
    return str(yaml.safe_load(path.read_text()).get("mixed_precision") or "no")


@pytest.mark.parametrize(
    "launcher, recipe, used",
    [
        ("cpu_2proc.yaml", "demo.yaml", "no"),
        ("1node_8gpu.yaml", "paper.yaml", "bf16"),
        ("multinode.yaml", "paper.yaml", "bf16"),
        # accelerate refuses mixed_precision next to a DeepSpeed JSON: the recipe decides, and
        # fills the JSON's bf16/fp16 "enabled": "auto".
        ("deepspeed_zero2.yaml", "paper.yaml", "bf16"),
    ],
)
def test_shipped_launchers_agree_with_the_recipes(launcher, recipe, used) -> None:
    cfg = load_config(REPO / "vlcd_dist" / "configs" / recipe, [])
    env = launcher_env(_launcher_precision(LAUNCHERS / launcher))
    assert resolve_mixed_precision(cfg.run.mixed_precision, env) == used


def _launch(config_file: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """One rank of ``-m vlcd_dist distill`` under accelerate launch with ``config_file``."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "--num_processes", "1", "--dynamo_backend", "no", "-m", "vlcd_dist", "distill", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, env=rank_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.multiproc
@pytest.mark.timeout(900)
def test_accelerate_config_file_precision_reaches_the_run(
    tmp_path, tiny_recipe, distill_sets
) -> None:
    # The CPU launcher of the README with bf16, as a user would edit it.
    launcher = yaml.safe_load((LAUNCHERS / "cpu_2proc.yaml").read_text())
    launcher["mixed_precision"] = "bf16"
    config_file = tmp_path / "cpu_bf16.yaml"
    config_file.write_text(yaml.safe_dump(launcher))

    def args(out: Path, *more: str) -> list[str]:
        sets = [*distill_sets, "distill.steps=1", *more]
        return [
            "--config",
            str(tiny_recipe),
            "--out",
            str(out),
            *[a for s in sets for a in ("--set", s)],
        ]

    out = tmp_path / "distill"
    proc = _launch(config_file, args(out))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16"
    # config.yaml keeps the recipe as given (the key left unset), so reruns compare equal.
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["mixed_precision"] is None

    # A recipe that says otherwise is refused at start-up, naming both settings (the rank exits
    # with status 2; the launcher reports the failed rank with its own status).
    refused = tmp_path / "refused"
    proc = _launch(config_file, args(refused, "run.mixed_precision=fp16"))
    assert proc.returncode != 0
    assert "vlcd: error: run.mixed_precision=fp16 in the recipe" in proc.stderr, proc.stderr[-5000:]
    assert "ACCELERATE_MIXED_PRECISION=bf16" in proc.stderr
    assert not (refused / "checkpoints").exists()

"""Compiled steps (run.compile): a compiled predistill follows the eager one step for step,
writes checkpoints with the same keys, resumes exactly, and counts teacher forwards as eager
does. The NaN skip with run.compile is in test_reliability_faults.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import STUDENTS
from safetensors.torch import load_file

from vlcd_dist.config import ConfigError, load_config
from vlcd_dist.train import compiling
from vlcd_dist.train.stages import create_stage

STEPS = 3

FIRST_STEP_ATOL = 1e-5
"""Step 1: same weights, same batch; compiled kernels only reorder fp32 sums."""
LATER_STEP_RTOL = 5e-3
"""Steps 2-3: the rounding differences of step 1's gradients pass through AdamW, whose update
g / (sqrt(v) + eps) is about +-lr for every element whatever its size, so gradients near zero
(where a rounding changes their sign or relative size a lot) move their weights differently.
Measured on this CPU (torch 2.14): step 1 within 3e-7 absolute; at most 9e-5 relative at
step 2 and 1.1e-3 at step 3 (tiny_mobilenetv3; tiny_resnet within 3e-6), so the bound leaves
about 4x headroom."""


class Stop(Exception):
    pass


def _cfg(recipe: Path, out: Path, compiled: bool, *sets: str):
    cfg = load_config(
        recipe, [f"predistill.steps={STEPS}", f"run.compile={str(compiled).lower()}", *sets]
    )
    cfg.run.out = str(out)
    return cfg


def _run(cfg, hook=None) -> tuple[object, dict[tuple[str, int], float]]:
    """Run predistill in-process; (final state, loss per (student, 0-based step))."""
    trainer = create_stage(cfg, "predistill")
    losses: dict[tuple[str, int], float] = {}

    def record(name: str, step: int, loss: torch.Tensor) -> torch.Tensor:
        losses[(name, step)] = float(loss.detach())
        return hook(name, step, loss) if hook is not None else loss

    trainer.loss_hook = record
    try:
        return trainer.run(), losses
    finally:
        trainer.backend.close()


@pytest.fixture(scope="module")
def eager_and_compiled(tiny_recipe, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("compile")
    runs = {}
    for label, compiled in (("eager", False), ("compiled", True)):
        out = root / label
        state, losses = _run(_cfg(tiny_recipe, out, compiled))
        assert state.step == STEPS
        runs[label] = (out, losses)
    return runs


def test_compiled_losses_follow_eager(eager_and_compiled) -> None:
    eager = eager_and_compiled["eager"][1]
    compiled = eager_and_compiled["compiled"][1]
    assert sorted(eager) == sorted(compiled) == [(s, k) for s in sorted(STUDENTS) for k in range(3)]
    for (name, step), value in eager.items():
        got = compiled[(name, step)]
        if step == 0:
            assert abs(got - value) <= FIRST_STEP_ATOL, (name, step, got, value)
        else:
            assert abs(got - value) <= LATER_STEP_RTOL * abs(value), (name, step, got, value)
    # The compiled run really compiled: inductor's kernels round differently from eager ones.
    assert any(compiled[k] != eager[k] for k in eager)


def test_compiled_checkpoints_and_exports_have_the_eager_keys(eager_and_compiled) -> None:
    eager_out = eager_and_compiled["eager"][0]
    compiled_out = eager_and_compiled["compiled"][0]
    files = sorted(
        p.relative_to(eager_out) for p in (eager_out / "checkpoints").rglob("*.safetensors")
    )
    assert files == sorted(
        p.relative_to(compiled_out) for p in (compiled_out / "checkpoints").rglob("*.safetensors")
    )
    assert any(p.name == "model.safetensors" for p in files)
    for rel in files:
        a, b = load_file(str(eager_out / rel)), load_file(str(compiled_out / rel))
        assert sorted(a) == sorted(b), rel
        assert not any("_orig_mod" in k for k in b), rel
        assert all(a[k].shape == b[k].shape for k in a), rel
    for name in STUDENTS:
        a = load_file(str(eager_out / "export" / f"{name}.safetensors"))
        b = load_file(str(compiled_out / "export" / f"{name}.safetensors"))
        assert sorted(a) == sorted(b)
    summaries = [json.loads((o / "summary.json").read_text()) for o in (eager_out, compiled_out)]
    # The counting hook stays outside the compiled tower: one teacher forward per step.
    assert summaries[0]["teacher_forwards"] == summaries[1]["teacher_forwards"] == STEPS


def test_compiled_resume_is_exact(tiny_recipe, eager_and_compiled, tmp_path) -> None:
    straight = eager_and_compiled["compiled"][0]  # checkpoint.every_steps=2: step_2 then step_3

    def crash_at_step_3(name: str, step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 2:
            raise Stop
        return loss

    cfg = _cfg(tiny_recipe, tmp_path / "broken", True)
    with pytest.raises(Stop):
        _run(cfg, crash_at_step_3)
    assert [p.name for p in (tmp_path / "broken" / "checkpoints").iterdir()] == ["step_000002"]
    cfg.checkpoint.resume = True
    state, losses = _run(cfg)
    assert state.step == STEPS and sorted({s for _, s in losses}) == [2]
    straight_losses = eager_and_compiled["compiled"][1]
    for key, value in losses.items():
        assert value == straight_losses[key], key
    for name in STUDENTS:
        a = load_file(str(straight / "export" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "broken" / "export" / f"{name}.safetensors"))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}.{key}")


def test_compile_settings_are_checked(monkeypatch, tiny_recipe) -> None:
    with pytest.raises(ConfigError, match=r"run.compile_mode='fast'.*'reduce-overhead'"):
        load_config(None, ["run.compile_mode=fast"])
    assert load_config(None, ["run.compile_mode=max-autotune"]).run.compile_mode == "max-autotune"
    # No C++ compiler on PATH: refused on CPU before any model is built, saying what to do.
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    with pytest.raises(
        compiling.CompileUnavailableError, match=r"C\+\+ compiler.*run.compile: false"
    ):
        compiling.require_compiler(torch.device("cpu"))

"""The teacher-feature cache (issue 17, part 1): `vlcd cache-teacher` stores the frozen
teacher's embedding of A seeded views per sample; distill with teacher.cache gives the losses of
a live-teacher run on the same views (fp32, 2 gloo ranks, within 1e-5), resumes mid-epoch bit
for bit, runs no teacher forward, and refuses a cache written for another teacher, shard set,
stage or augmentation recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import REPO, accelerate_cmd, run_cli, scalars
from safetensors.torch import load_file

from vlcd_dist.config import load_config
from vlcd_dist.data.stream import ShardLoader, StreamConfig, resolve_shards
from vlcd_dist.data.teacher_cache import TeacherCache, iter_views
from vlcd_dist.data.views import pick_view
from vlcd_dist.errors import ConfigError, DataError
from vlcd_dist.io import save_tensors
from vlcd_dist.train.preflight import check_stage_inputs
from vlcd_dist.train.stages import load_frozen_teacher
from vlcd_dist.train.teacher_cache import open_cache

WORKER = REPO / "tests" / "workers" / "resume_worker.py"
VIEWS = 2
STEPS, EVERY, STOP = 8, 2, 6
"""2 ranks x batches of 4 on the 38 placenta train samples: 4 steps per epoch, so the stop
after step 6 is in the middle of epoch 1 (the plan of tests/test_reliability_resume.py)."""


def _cfg(recipe: Path, *sets: str):
    return load_config(recipe, list(sets))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_recipe, tiny_pipeline) -> Path:
    """An fp32 cache of 2 views of the placenta train split, written by the CLI."""
    out = tmp_path_factory.mktemp("teacher_cache") / "cache"
    code = run_cli(
        f"cache-teacher --config {tiny_recipe} --views {VIEWS} --stage distill --dtype fp32 "
        f"--out {out} --set teacher.checkpoint={tiny_pipeline['teacher']} --device cpu"
    )
    assert code == 0
    return out


def test_seeded_views_are_drawn_again_exactly(placenta_shards) -> None:
    """A loader with data.views shows view pick_view(seed, epoch, key) of each sample, and its
    pixels are those iter_views regenerates (what cache-teacher embeds); the pick changes with
    the epoch, and the augmentation is not the unseeded one."""
    cfg = StreamConfig(
        shards=str(placenta_shards), split="train", batch_size=4, image_size=(32, 32),
        num_workers=1, shuffle_buffer=8, drop_last=True, seed=3, views=VIEWS,
    )  # fmt: skip
    loader = ShardLoader(cfg, 0, 1)
    shard_set = resolve_shards(str(placenta_shards), "train")
    regenerated = {
        key: images for url in shard_set.urls for key, images in iter_views(shard_set, cfg, url, 2)
    }
    assert len(regenerated) == shard_set.total == 38
    picks = {}
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            for key, view, image in zip(batch["key"], batch["view"], batch["image"], strict=True):
                assert view == pick_view(3, epoch, key, VIEWS)
                assert torch.equal(image, regenerated[key][view]), (epoch, key, view)
                picks[(epoch, key)] = view
    assert len({v for v in picks.values()}) == VIEWS
    assert any(picks[(0, k)] != picks[(1, k)] for (e, k) in picks if e == 0 and (1, k) in picks)
    # Two views of one sample differ (other crop / flip / jitter).
    some = next(iter(regenerated.values()))
    assert not torch.equal(some[0], some[1])


def test_cache_holds_every_view_of_every_train_sample(cache_dir, tiny_recipe, tiny_pipeline):
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["format"] == "vlcd-teacher-cache/1"
    assert (manifest["stage"], manifest["views"], manifest["dtype"]) == ("distill", 2, "fp32")
    assert manifest["samples"] == 38 and len(manifest["shards"]["files"]) == 7
    assert manifest["recipe"]["image_size"] == [32, 32] and manifest["recipe"]["seed"] == 0
    files = sorted(cache_dir.glob("*.safetensors"))
    assert len(files) == 7
    z = load_file(str(files[0]))["z"]
    assert z.dtype == torch.float32 and z.shape[1:] == (VIEWS, manifest["embed_dim"])
    # The stored z_T is the frozen teacher's output on the regenerated view.
    cfg = _cfg(tiny_recipe, f"teacher.checkpoint={tiny_pipeline['teacher']}")
    frozen = load_frozen_teacher(cfg, torch.device("cpu"))
    cache = TeacherCache.open(cache_dir).load()
    stream = StreamConfig(
        shards=cfg.data.placenta, split="train", image_size=(32, 32), views=VIEWS, seed=0
    )
    shard_set = resolve_shards(cfg.data.placenta, "train")
    key, images = next(iter_views(shard_set, stream, shard_set.urls[0], VIEWS))
    live = frozen.encode_image(torch.stack(images))
    stored = cache.lookup([key, key], [0, 1])
    torch.testing.assert_close(stored, live, rtol=0, atol=1e-5)


def test_a_cached_run_builds_no_image_tower(tiny_recipe, tiny_pipeline) -> None:
    cfg = _cfg(tiny_recipe, f"teacher.checkpoint={tiny_pipeline['teacher']}")
    frozen = load_frozen_teacher(cfg, torch.device("cpu"), image_tower=False)
    assert frozen.teacher.image is None and frozen.num_image_params() == 0
    full = load_frozen_teacher(cfg, torch.device("cpu"))
    # The text tower and logit scale are the trained ones all the same.
    assert frozen.text_hash() == full.text_hash()
    assert float(frozen.get_logit_scale()) == float(full.get_logit_scale())


def _refusal(cfg, stage: str = "distill") -> str:
    with pytest.raises(DataError) as info:
        open_cache(cfg, stage)
    return str(info.value)


def test_a_stale_cache_is_refused_with_the_reason(
    cache_dir, tiny_recipe, tiny_pipeline, placenta_shards, tmp_path
) -> None:
    teacher = tiny_pipeline["teacher"]
    base = [f"teacher.checkpoint={teacher}", f"teacher.cache={cache_dir}"]
    assert len(open_cache(_cfg(tiny_recipe, *base), "distill")) == 38  # the matching recipe
    # Another augmentation recipe.
    text = _refusal(_cfg(tiny_recipe, *base, "data.crop_scale=[0.3, 1.0]"))
    assert "recipe.crop_scale: the cache has [0.5, 1.0], this run [0.3, 1.0]" in text
    assert "vlcd cache-teacher" in text
    assert "recipe.seed" in _refusal(_cfg(tiny_recipe, *base, "run.seed=1"))
    assert "recipe.views: the cache has 2, this run 3" in _refusal(
        _cfg(tiny_recipe, *base, "data.views=3")
    )
    # Another stage.
    assert "stage: the cache was written for 'distill'" in _refusal(
        _cfg(tiny_recipe, *base), "predistill"
    )
    # Another teacher: one image weight changed.
    state = load_file(str(teacher))
    name = next(k for k in sorted(state) if k.startswith("image.") and state[k].is_floating_point())
    state[name] = state[name] + 1e-3
    other = tmp_path / "other_teacher.safetensors"
    save_tensors(state, other)
    text = _refusal(_cfg(tiny_recipe, f"teacher.checkpoint={other}", f"teacher.cache={cache_dir}"))
    assert "another teacher" in text and "teacher.image_weights: the cache has" in text
    # Another shard set: one train shard fewer.
    shards = tmp_path / "placenta"
    shutil.copytree(placenta_shards, shards)
    sizes = json.loads((shards / "sizes.json").read_text())
    dropped = sorted(n for n in sizes if n.startswith("placenta-train-"))[-1]
    del sizes[dropped]
    (shards / "sizes.json").write_text(json.dumps(sizes))
    text = _refusal(_cfg(tiny_recipe, *base, f"data.placenta={shards}"))
    assert "shards.files: the cache has 1 entr(y/ies) this run lacks" in text and dropped in text
    # Not a cache at all; no such folder (the start-up check names the key).
    assert "has no manifest.json" in _refusal(
        _cfg(tiny_recipe, f"teacher.checkpoint={teacher}", f"teacher.cache={tmp_path}")
    )
    with pytest.raises(ConfigError, match="teacher.cache="):
        check_stage_inputs(
            _cfg(tiny_recipe, *base, f"teacher.cache={tmp_path / 'nope'}"), "distill"
        )


def test_cli_refuses_a_stale_cache(cache_dir, tiny_recipe, tiny_pipeline, tmp_path, capsys):
    code = run_cli(
        f"distill --config {tiny_recipe} --out {tmp_path / 'run'} "
        f"--set teacher.checkpoint={tiny_pipeline['teacher']} --set teacher.cache={cache_dir} "
        "--set data.color_jitter=[0,0,0,0] --set distill.init_from=null"
    )
    assert code == 2
    assert "recipe.color_jitter" in capsys.readouterr().err


# --- 2 ranks: equal to the live teacher, exact resume -----------------------------------------


def _launch(recipe: Path, out: Path, tag: str, sets: list[str], *extra: object) -> None:
    import subprocess

    from helpers import rank_env

    args: list[object] = [WORKER, recipe, out, tag, *extra]
    for s in sets:
        args += ["--set", s]
    cmd = accelerate_cmd(*args, nproc=2)
    log = out.parent / f"{out.name}.{tag}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=rank_env(), stdout=f, stderr=subprocess.STDOUT, timeout=400)
    assert proc.returncode == 0, f"{cmd}\n{log.read_text()[-6000:]}"


def _losses(folder: Path) -> dict[str, list[tuple[int, float]]]:
    return {t: v for t, v in scalars(folder / "tb").items() if not t.startswith("perf/")}


def _common(tiny_pipeline) -> list[str]:
    return [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        "distill.init_from=null",
        f"distill.steps={STEPS}",
        f"checkpoint.every_steps={EVERY}",
        "checkpoint.keep_last=2",
        "logging.every_steps=1",
    ]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, cache_dir, tiny_recipe, tiny_pipeline) -> dict[str, Path]:
    """On 2 gloo ranks (Accelerate): a live-teacher run with data.views, a cached run, and a
    cached run stopped after the checkpoint of step STOP (mid-epoch 1), then resumed."""
    root = tmp_path_factory.mktemp("cache_runs")
    common = _common(tiny_pipeline)
    live, cached, resumed = root / "live", root / "cached", root / "resumed"
    _launch(tiny_recipe, live, "a", [*common, f"data.views={VIEWS}"])
    with_cache = [*common, f"teacher.cache={cache_dir}"]
    _launch(tiny_recipe, cached, "a", with_cache)
    _launch(tiny_recipe, resumed, "b1", with_cache, "--stop-after", STOP)
    meta = json.loads((resumed / "checkpoints" / f"step_{STOP:06d}" / "meta.json").read_text())
    assert (meta["state"]["epoch"], meta["state"]["batch_in_epoch"]) == (1, 2)  # mid-epoch 1
    _launch(tiny_recipe, resumed, "b2", with_cache, "--resume")
    return {"live": live, "cached": cached, "resumed": resumed}


@pytest.mark.multiproc
def test_cached_distill_matches_the_live_teacher_and_resumes_exactly(
    two_rank_runs, cache_dir
) -> None:
    live, cached, resumed = (two_rank_runs[k] for k in ("live", "cached", "resumed"))

    # Same samples at every step on every rank.
    for rank in range(2):
        keys = [
            (run / "keys" / f"rank{rank}.{tag}.txt").read_text().splitlines()
            for run, tag in ((live, "a"), (cached, "a"))
        ]
        assert keys[0] == keys[1] and len(keys[0]) == STEPS * 4

    # Per-step losses: the cached run equals the live-teacher run within 1e-5 ...
    la, lc, lr = _losses(live), _losses(cached), _losses(resumed)
    assert sorted(la) == sorted(lc) == sorted(lr)
    loss_tags = [t for t in la if t.endswith("/loss")]
    assert len(loss_tags) == 2
    worst = 0.0
    for tag in la:
        assert [s for s, _ in la[tag]] == [s for s, _ in lc[tag]] == list(range(1, STEPS + 1))
        for (_, a), (_, c) in zip(la[tag], lc[tag], strict=True):
            worst = max(worst, abs(a - c))
            assert abs(a - c) <= 1e-5, (tag, la[tag], lc[tag])
        # ... and the stopped and resumed cached run equals the uninterrupted one exactly.
        assert lr[tag] == lc[tag], tag
    print(f"largest |live - cached| over every logged value: {worst:.3g}")

    final = f"checkpoints/step_{STEPS:06d}"
    for name in ("tiny_mobilenetv3", "tiny_resnet"):
        a = load_file(str(cached / final / name / "model.safetensors"))
        b = load_file(str(resumed / final / name / "model.safetensors"))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name
    summaries = {r: json.loads((r / "summary.json").read_text()) for r in (live, cached, resumed)}
    assert summaries[live]["teacher_forwards"] == STEPS
    assert summaries[cached]["teacher_forwards"] == 0
    assert summaries[resumed]["teacher_forwards"] == 0
    assert summaries[cached]["teacher_cache"] == str(cache_dir)


@pytest.mark.multiproc
def test_cached_distill_under_deepspeed(
    two_rank_runs, cache_dir, tiny_recipe, tiny_pipeline, tmp_path
) -> None:
    """The cache only replaces the teacher forward: under DeepSpeed (ZeRO 0, 2 ranks) a cached
    run trains like the Accelerate one (the tolerance of tests/test_deepspeed.py) with no
    teacher forward."""
    pytest.importorskip("deepspeed")
    from helpers import accelerate_launch, distill_args

    out = tmp_path / "deepspeed"
    sets = [*_common(tiny_pipeline), f"teacher.cache={cache_dir}", "run.zero_stage=0"]
    accelerate_launch(*distill_args(tiny_recipe, out, sets, "--backend", "deepspeed"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "deepspeed" and summary["teacher_forwards"] == 0
    got, reference = _losses(out), _losses(two_rank_runs["cached"])
    for name in ("tiny_mobilenetv3", "tiny_resnet"):
        tag = f"{name}/loss"
        assert [s for s, _ in got[tag]] == list(range(1, STEPS + 1))
        for (_, a), (_, b) in zip(got[tag], reference[tag], strict=True):
            assert abs(a - b) <= 1e-4, (tag, got[tag], reference[tag])


def test_cached_predistill_matches_the_live_teacher(tiny_recipe, tiny_pipeline, tmp_path) -> None:
    """predistill (natural shards, one rank in-process) from an fp32 cache of 3 views: the
    live-teacher run's losses with data.views=3, and no teacher forward."""
    teacher = f"teacher.checkpoint={tiny_pipeline['teacher']}"
    cache = tmp_path / "cache"
    assert (
        run_cli(
            f"cache-teacher --config {tiny_recipe} --views 3 --stage predistill --dtype fp32 "
            f"--out {cache} --set {teacher}"
        )
        == 0
    )
    assert json.loads((cache / "manifest.json").read_text())["samples"] == 64
    sets = f"--set {teacher} --set predistill.steps=3 --set logging.every_steps=1"
    live, cached = tmp_path / "live", tmp_path / "cached"
    assert run_cli(f"predistill --config {tiny_recipe} --out {live} {sets} --set data.views=3") == 0
    assert (
        run_cli(
            f"predistill --config {tiny_recipe} --out {cached} {sets} --set teacher.cache={cache}"
        )
        == 0
    )
    la, lc = _losses(live), _losses(cached)
    assert sorted(la) == sorted(lc) and "tiny_resnet/loss" in la
    for tag in la:
        assert [s for s, _ in la[tag]] == [s for s, _ in lc[tag]] == [1, 2, 3], tag
        for (_, a), (_, c) in zip(la[tag], lc[tag], strict=True):
            assert abs(a - c) <= 1e-5, (tag, la[tag], lc[tag])
    assert json.loads((live / "summary.json").read_text())["teacher_forwards"] == 3
    assert json.loads((cached / "summary.json").read_text())["teacher_forwards"] == 0

"""Bad data end to end: a 2-rank distill over shards with 5% corrupt samples finishes and counts
every one of them exactly once (summary.json and TensorBoard); with data.strict=true it stops at
the first one and names its shard and key."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from helpers import accelerate_launch, distill_args, scalars

from vlcd_dist.config import load_config
from vlcd_dist.data.stream import SKIP_KINDS, ShardLoader, iter_tar, resolve_shards
from vlcd_dist.errors import DataError
from vlcd_dist.train.stages import create_stage

SHARDS, PER_SHARD = 6, 10  # 60 samples: 30 per rank, 6 full batches of 5 (nothing dropped)
BATCH = 5
STEPS = SHARDS * PER_SHARD // (2 * BATCH)  # one epoch
# 3 of 60 samples (5%): sample index in the set -> what is wrong with it (in shards 1, 2, 4;
# none of them among the 12 samples that appear twice).
BAD = {13: "corrupt_image", 29: "missing_key", 44: "bad_json"}
EXPECTED = {kind: sum(k == kind for k in BAD.values()) for kind in SKIP_KINDS}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_bad_set(source: Path, out: Path) -> dict[tuple[str, str], str]:
    """60 placenta samples from the session's shards (every key has a text anchor of the
    session teacher) in 6 train shards of 10, 3 of them damaged as BAD says. Returns
    (shard path, key) -> kind of every damaged sample."""
    raws = [raw for url in resolve_shards(str(source)).urls for raw in iter_tar(url)]
    # 48 distinct samples; the last 12 repeat the first 12 (none of which is damaged).
    samples = (raws + raws)[: SHARDS * PER_SHARD]
    assert len(raws) == 48 and all(12 <= i < 48 for i in BAD)
    out.mkdir(parents=True)
    damaged = {}
    for s in range(SHARDS):
        name = f"placenta-train-{s:06d}.tar"
        with tarfile.open(out / name, "w") as tar:
            for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                raw, kind = samples[i], BAD.get(i)
                key = raw["__key__"]
                if kind:
                    damaged[(str(out / name), key)] = kind
                jpg = b"\xff\xd8\xff\xe0garbage" if kind == "corrupt_image" else raw["jpg"]
                _add(tar, f"{key}.jpg", jpg)
                if kind != "missing_key":
                    _add(tar, f"{key}.txt", raw["txt"])
                _add(tar, f"{key}.json", b"{not json" if kind == "bad_json" else raw["json"])
    (out / "sizes.json").write_text(
        json.dumps({f"placenta-train-{s:06d}.tar": PER_SHARD for s in range(SHARDS)})
    )
    info = json.loads((source / "info.json").read_text())
    (out / "info.json").write_text(json.dumps({"kind": "placenta", "tasks": info["tasks"]}))
    return damaged


@pytest.fixture(scope="module")
def bad_set(placenta_shards, tmp_path_factory) -> tuple[Path, dict[tuple[str, str], str]]:
    out = tmp_path_factory.mktemp("bad") / "placenta"
    return out, write_bad_set(placenta_shards, out)


def _sets(tiny_pipeline, shards: Path) -> list[str]:
    return [
        f"teacher.checkpoint={tiny_pipeline['teacher']}",
        f"distill.init_from={tiny_pipeline['predistill']}",
        f"distill.steps={STEPS}",
        f"data.placenta={shards}",
        f"data.batch_size={BATCH}",
        "logging.every_steps=2",
    ]


@pytest.mark.multiproc
def test_distill_skips_and_counts_every_bad_sample(
    bad_set, tiny_recipe, tiny_pipeline, tmp_path
) -> None:
    shards, damaged = bad_set
    out = tmp_path / "distill"
    accelerate_launch(*distill_args(tiny_recipe, out, _sets(tiny_pipeline, shards)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["world_size"] == 2
    # Every step had full batches: the skipped samples were refilled.
    assert summary["samples"] == STEPS * BATCH * 2
    assert summary["skipped_samples"] == EXPECTED
    assert sum(EXPECTED.values()) == len(damaged) == 3
    tags = scalars(out / "tb")
    for kind in SKIP_KINDS:
        points = tags[f"data/skipped_{kind}"]
        # Running totals over all ranks, logged every 2 steps; the last one is the total.
        assert [s for s, _ in points] == list(range(2, STEPS + 1, 2)), kind
        values = [v for _, v in points]
        assert values == sorted(values) and values[-1] == EXPECTED[kind], kind
    meta = json.loads((out / "checkpoints" / f"step_{STEPS:06d}" / "meta.json").read_text())
    assert meta["state"]["skipped_samples"] == EXPECTED


def _first_bad(recipe: Path, shards: Path, rank: int) -> str | None:
    """The strict-mode error of ``rank`` in the run below, up to its detail (which can hold a
    memory address): ``SHARD: sample 'KEY': KIND``, the first bad sample in its reading order."""
    overrides = [f"data.batch_size={BATCH}", "data.strict=true", "data.num_workers=0"]
    cfg = load_config(recipe, overrides)
    # 0 workers read the same samples in the same order as the run's one worker per rank.
    stream = cfg.data.stream(str(shards), split="train", train=True, seed=cfg.run.seed)
    try:
        for _ in ShardLoader(stream, rank, 2):
            pass
    except DataError as err:
        return ": ".join(str(err).split(": ")[:3])
    return None


@pytest.mark.multiproc
def test_strict_mode_stops_at_the_first_bad_sample(
    bad_set, tiny_recipe, tiny_pipeline, tmp_path
) -> None:
    shards, damaged = bad_set
    out = tmp_path / "strict"
    sets = [*_sets(tiny_pipeline, shards), "data.strict=true"]
    proc = accelerate_launch(*distill_args(tiny_recipe, out, sets), check=False, timeout=300)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    # Shards 1, 2 and 4 go to different ranks in epoch 0: both ranks meet a bad sample.
    firsts = [_first_bad(tiny_recipe, shards, r) for r in range(2)]
    assert all(firsts)
    for message in firsts:
        shard, key, kind = message.split(": ")
        assert damaged[(shard, key.removeprefix("sample ").strip("'"))] == kind
    assert any(f"vlcd: error: {m}" in log for m in firsts), log[-6000:]
    assert not (out / "summary.json").exists() and not (out / "export").exists()


class _Stop(Exception):
    pass


def test_skip_counts_survive_a_resume_in_a_later_epoch(
    bad_set, tiny_recipe, tiny_pipeline, tmp_path
) -> None:
    """One rank, two epochs of 2 steps (every epoch reads the bad samples again), stopped after
    step 3 (checkpoint of step 3: epoch 1, 1 batch in): the resumed run neither loses epoch 0's
    counts nor counts again the bad samples of the batch it re-reads to skip ahead."""
    shards, _ = bad_set
    sets = [*_sets(tiny_pipeline, shards), "data.batch_size=30", "distill.steps=4"]
    sets += ["checkpoint.every_steps=3", "logging.every_steps=1"]
    cfg = load_config(tiny_recipe, sets)
    cfg.run.out = str(tmp_path / "run")

    def stop_in_step_4(name: str, step: int, loss):
        if step == 3:  # 0-based: the 4th step, after the checkpoint of step 3
            raise _Stop
        return loss

    for resume, hook in ((False, stop_in_step_4), (True, None)):
        cfg.checkpoint.resume = resume
        trainer = create_stage(cfg, "distill")
        trainer.loss_hook = hook
        try:
            if hook is None:
                trainer.run()
            else:
                with pytest.raises(_Stop):
                    trainer.run()
        finally:
            trainer.backend.close()
    twice = {kind: 2 * n for kind, n in EXPECTED.items()}
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["skipped_samples"] == twice
    points = scalars(tmp_path / "run" / "tb")["data/skipped_corrupt_image"]
    assert [s for s, _ in points] == [1, 2, 3, 4]
    # A running total: 1 at the end of epoch 0 (step 2), 2 at the end of epoch 1.
    assert points[1][1] == 1 and points[-1][1] == 2

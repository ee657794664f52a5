"""Streaming: batches, transforms, epoch plans, bad samples and strict mode."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlcd_dist.data.stream import (
    ShardLoader,
    StreamConfig,
    iter_tar,
    plan_epoch,
    resolve_shards,
)
from vlcd_dist.errors import DataError


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_placenta_shard(path: Path, keys: list[str], bad: dict[str, str] | None = None) -> None:
    """A placenta shard; ``bad`` maps key -> 'corrupt_image' | 'missing_txt' | 'bad_json'."""
    bad = bad or {}
    with tarfile.open(path, "w") as tar:
        for i, key in enumerate(keys):
            kind = bad.get(key)
            jpg = b"\xff\xd8\xff\xe0garbage" if kind == "corrupt_image" else _jpeg(i)
            _add(tar, f"{key}.jpg", jpg)
            if kind != "missing_txt":
                _add(tar, f"{key}.txt", f"report of {key}".encode())
            meta = (
                b"{not json"
                if kind == "bad_json"
                else json.dumps(
                    {"labels": {"a": i % 2, "b": 1}, "split": "train", "study_id": key}
                ).encode()
            )
            _add(tar, f"{key}.json", meta)


def _make_set(folder: Path, n_shards: int, per_shard: int, bad=None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes, all_keys = {}, []
    for s in range(n_shards):
        keys = [f"s{s}_k{i:03d}" for i in range(per_shard)]
        name = f"placenta-train-{s:06d}.tar"
        _write_placenta_shard(folder / name, keys, bad)
        sizes[name] = per_shard
        all_keys += keys
    (folder / "sizes.json").write_text(json.dumps(sizes))
    (folder / "info.json").write_text(json.dumps({"kind": "placenta", "tasks": ["a", "b"]}))
    return all_keys


def _truncate_mid_member(path: Path) -> None:
    """Cut the tar in the middle of its 5th member's data."""
    with tarfile.open(path) as tar:
        member = tar.getmembers()[4]
    data = path.read_bytes()
    path.write_bytes(data[: member.offset_data + member.size // 2])


def _cfg(folder: Path, **kw) -> StreamConfig:
    base = dict(
        shards=str(folder),
        split="train",
        batch_size=4,
        image_size=(32, 32),
        num_workers=2,
        shuffle=False,
        train=False,
    )
    base.update(kw)
    return StreamConfig(**base)


def test_batches_are_dicts_of_images_text_labels_keys(placenta_shards):
    loader = ShardLoader(
        _cfg(placenta_shards, image_size=(48, 64), train=True, shuffle=True), rank=0, world=1
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 48, 64) and batch["image"].dtype == torch.float32
    assert batch["labels"].shape == (4, 5)
    assert batch["tasks"] == ["meconium", "fir", "mir", "chorioamnionitis", "sepsis"]
    assert len(batch["text"]) == 4 and all(t.startswith("The trimmed") for t in batch["text"])
    assert len(batch["key"]) == 4
    # Not normalised: [0, 1] pixels; each model applies its own mean and std (models.preprocess).
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["image"].max() > 0.5


def test_one_epoch_yields_every_sample_once_and_shuffles_per_epoch(placenta_shards):
    sizes = json.loads((placenta_shards / "sizes.json").read_text())
    n_train = sum(v for k, v in sizes.items() if k.startswith("placenta-train"))
    loader = ShardLoader(_cfg(placenta_shards, shuffle=True, shuffle_buffer=8), rank=0, world=1)
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        keys = [k for b in loader for k in b["key"]]
        assert len(keys) == n_train == len(set(keys))
        orders.append(keys)
    assert orders[0] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1])
    # The same epoch replays identically (resume needs this).
    loader.set_epoch(1)
    assert [k for b in loader for k in b["key"]] == orders[1]


def test_natural_shards_keep_only_images(natural_shards):
    loader = ShardLoader(
        StreamConfig(shards=str(natural_shards), batch_size=8, image_size=(32, 32), num_workers=2),
        rank=0,
        world=1,
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 8
    assert "text" not in batches[0] and batches[0]["image"].shape == (8, 3, 32, 32)


def test_plan_gives_every_rank_the_same_batch_count():
    sizes = [10, 7, 3, 12, 9, 1, 8, 5, 6]  # uneven shards, odd count
    cfg = StreamConfig(batch_size=4, num_workers=2)
    for epoch in range(4):
        plans = [plan_epoch(sizes, cfg, epoch, world=2, rank=r) for r in range(2)]
        assert plans[0].batches == plans[1].batches
        read = sorted(i for rank in plans[0].shards for w in rank for i in w)
        assert read == list(range(len(sizes)))  # every shard read exactly once
        per_rank = [sum(-(-q // 4) for q in qs) for qs in plans[0].quota]
        assert plans[0].batches == min(per_rank)


def test_too_few_shards_stop_at_start_up(natural_shards):
    cfg = StreamConfig(shards=str(natural_shards), batch_size=4, num_workers=4)
    with pytest.raises(DataError, match=r"8 shard\(s\) for 4 rank\(s\) x 4 worker\(s\)"):
        ShardLoader(cfg, rank=0, world=4)


def test_resampled_epochs_have_fixed_length(natural_shards):
    cfg = StreamConfig(
        shards=str(natural_shards),
        batch_size=5,
        num_workers=2,
        resampled=True,
        samples_per_epoch=40,
        image_size=(16, 16),
    )
    loader = ShardLoader(cfg, rank=1, world=2)
    got = [len(b["key"]) for b in loader]
    assert sum(got) == 20 and len(got) == len(loader) == 4


def test_bad_samples_are_skipped_counted_and_refilled(tmp_path):
    folder = tmp_path / "bad"
    bad = {"s0_k001": "corrupt_image", "s1_k002": "missing_txt", "s2_k003": "bad_json"}
    _make_set(folder, n_shards=4, per_shard=6, bad=bad)
    _truncate_mid_member(folder / "placenta-train-000003.tar")
    loader = ShardLoader(_cfg(folder, batch_size=4), rank=0, world=1)
    keys = [k for b in loader for k in b["key"]]
    assert loader.skipped == {
        "corrupt_image": 1,
        "missing_key": 1,
        "bad_json": 1,
        "bad_text": 0,
        "truncated_tar": 1,
    }
    # The truncated shard yielded its complete samples before the damage: members are
    # k000.{jpg,txt,json}, k001.{jpg,txt,...}; the cut is inside k001.txt, so only k000 is whole.
    assert "s3_k000" in keys and "s3_k001" not in keys
    # Refilled: still exactly one epoch's worth of samples, none of the bad ones.
    assert len(keys) == 24
    assert not set(bad) & set(keys)


def test_strict_mode_names_shard_and_key(tmp_path):
    folder = tmp_path / "strict"
    _make_set(folder, n_shards=2, per_shard=4, bad={"s1_k002": "corrupt_image"})
    loader = ShardLoader(_cfg(folder, strict=True, num_workers=0), rank=0, world=1)
    with pytest.raises(DataError) as err:
        list(loader)
    msg = str(err.value)
    assert "placenta-train-000001.tar" in msg and "s1_k002" in msg and "corrupt_image" in msg

    trunc = tmp_path / "trunc"
    _make_set(trunc, n_shards=2, per_shard=4)
    _truncate_mid_member(trunc / "placenta-train-000000.tar")
    loader = ShardLoader(_cfg(trunc, strict=True, num_workers=2), rank=0, world=1)
    with pytest.raises(Exception, match=r"placenta-train-000000\.tar.*truncated_tar"):
        list(loader)


def test_shard_cut_between_members_counts_as_truncated(tmp_path):
    folder = tmp_path / "cut"
    _make_set(folder, n_shards=2, per_shard=4)
    path = folder / "placenta-train-000001.tar"
    with tarfile.open(path) as tar:
        member = tar.getmembers()[6]  # first member of the third sample
    path.write_bytes(path.read_bytes()[: member.offset])
    loader = ShardLoader(_cfg(folder, num_workers=0), rank=0, world=1)
    keys = [k for b in loader for k in b["key"]]
    assert loader.skipped["truncated_tar"] == 1 and len(keys) == 8


def test_no_pickle_members_are_ever_read(tmp_path):
    folder = tmp_path / "pkl"
    _make_set(folder, n_shards=1, per_shard=2)
    path = folder / "placenta-train-000000.tar"
    with tarfile.open(path, "a") as tar:
        _add(tar, "s0_k000.pyd", b"\x80\x04cos\nsystem\n(Vtouch /tmp/pwned\ntR.")
    raws = list(iter_tar(str(path)))
    assert all("pyd" not in r for r in raws)


def test_brace_pattern_and_missing_sizes(tmp_path, placenta_shards):
    spec = str(placenta_shards / "placenta-train-{000000..000001}.tar")
    shard_set = resolve_shards(spec)
    assert len(shard_set.urls) == 2 and shard_set.kind == "placenta"
    empty = tmp_path / "nosizes"
    empty.mkdir()
    with pytest.raises(DataError, match="no sizes.json"):
        resolve_shards(str(empty))

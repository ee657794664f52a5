"""Safe loading: nothing from a checkpoint, a weight file, a shard or a recipe is ever unpickled
or executed. Every payload below writes a file when unpickled; the tests check the file is never
written and the payload is refused or ignored. (DeepSpeed engine files: tests/test_deepspeed.py.)
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from vlcd_dist.config import ConfigError, load_config
from vlcd_dist.data.stream import SKIP_KINDS, ShardLoader, StreamConfig, iter_tar
from vlcd_dist.models.weights import load_state_dict
from vlcd_dist.train.backend import AccelerateBackend
from vlcd_dist.train.checkpoint import Checkpointer, CheckpointError, TrainState
from vlcd_dist.train.optim import create_optimizer, create_scheduler


class Payload:
    """Unpickling this calls ``open(target, "w")``: the target file appears."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def payload_bytes(target: Path) -> bytes:
    data = pickle.dumps(Payload(target), protocol=2)
    # Built, never loaded: its opcodes show it would call open() on the target.
    listing = io.StringIO()
    pickletools.dis(data, out=listing)
    assert "open" in listing.getvalue() and str(target) in listing.getvalue()
    return data


def torch_payload(path: Path, target: Path) -> None:
    """A .pt file in torch's zip format whose object unpickles to open(target, "w")."""
    torch.save({"state_dict": Payload(target)}, str(path))


@pytest.fixture(scope="module")
def backend() -> AccelerateBackend:
    return AccelerateBackend(cpu=True)


def _trainee(backend, name: str = "net"):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = create_optimizer(net, lr=0.1, weight_decay=0.01)
    trainee = backend.prepare(name, net, opt)
    net(torch.randn(5, 4)).pow(2).mean().backward()
    backend.step(trainee)
    return trainee, create_scheduler(opt, total=10, warmup=2)


# -- checkpoints and weight files ------------------------------------------------------------


def test_planted_pickle_files_in_a_checkpoint_are_never_read(backend, tmp_path) -> None:
    target = tmp_path / "pwned"
    trainee, sched = _trainee(backend)
    ckpt = Checkpointer(tmp_path / "ckpt", backend)
    path = ckpt.save("distill", TrainState(step=2), [trainee], {"net": sched}, {}, "")
    for planted in ("evil.pt", "net/optimizer.pt", "net/model.pth", "rng/rank00000.pt"):
        torch_payload(path / planted, target)
    (path / "net" / "state.pickle").write_bytes(payload_bytes(target))
    # Extra files are not part of the checkpoint: it is still intact, and resuming reads only
    # the safetensors and JSON files it lists.
    assert ckpt.latest() == path
    other, other_sched = _trainee(backend)
    assert ckpt.load(path, "distill", [other], {"net": other_sched}).step == 2
    assert not target.exists()


def test_a_pickle_disguised_as_safetensors_is_refused(backend, tmp_path, caplog) -> None:
    target = tmp_path / "pwned"
    trainee, sched = _trainee(backend)
    ckpt = Checkpointer(tmp_path / "ckpt", backend, keep_last=0)
    first = ckpt.save("distill", TrainState(step=2), [trainee], {"net": sched}, {}, "")
    second = ckpt.save("distill", TrainState(step=4), [trainee], {"net": sched}, {}, "")
    (second / "net" / "model.safetensors").write_bytes(payload_bytes(target))
    with pytest.raises(CheckpointError, match=r"damaged.*net/model\.safetensors"):
        ckpt.load(second, "distill", [trainee], {"net": sched})
    assert ckpt.latest() == first  # the damaged newer one is passed over
    (first / "net" / "optimizer.safetensors").write_bytes(payload_bytes(target))
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        ckpt.latest()
    assert not target.exists()


def test_weight_files_with_a_pickle_payload_are_refused(tmp_path) -> None:
    target = tmp_path / "pwned"
    pth = tmp_path / "backbone.pth"
    torch_payload(pth, target)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        load_state_dict(pth)
    fake = tmp_path / "student.safetensors"
    fake.write_bytes(payload_bytes(target))
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error type
        load_state_dict(fake)
    assert not target.exists()


# -- shards ----------------------------------------------------------------------------------


def _jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_pickle_members_of_a_shard_are_never_unpickled(tmp_path) -> None:
    target = tmp_path / "pwned"
    evil = payload_bytes(target)
    folder = tmp_path / "shards"
    folder.mkdir()
    keys = [f"k{i:03d}" for i in range(8)]
    with tarfile.open(folder / "placenta-train-000000.tar", "w") as tar:
        for i, key in enumerate(keys):
            _add(tar, f"{key}.jpg", _jpeg(i))
            _add(tar, f"{key}.txt", f"report {key}".encode())
            meta = {"labels": {"a": i % 2}, "split": "train", "study_id": key}
            # k003's labels are a pickle instead of JSON; the others carry pickles beside them.
            _add(tar, f"{key}.json", evil if key == "k003" else json.dumps(meta).encode())
            for ext in ("pyd", "pth", "pickle", "pkl", "pt"):
                _add(tar, f"{key}.{ext}", evil)
    (folder / "sizes.json").write_text(json.dumps({"placenta-train-000000.tar": len(keys)}))
    (folder / "info.json").write_text(json.dumps({"kind": "placenta", "tasks": ["a"]}))

    raws = list(iter_tar(str(folder / "placenta-train-000000.tar")))
    assert [r["__key__"] for r in raws] == keys
    assert all(set(r) == {"__key__", "__url__", "jpg", "txt", "json"} for r in raws)

    cfg = StreamConfig(
        shards=str(folder),
        split="train",
        batch_size=2,
        image_size=(32, 32),
        train=False,
        shuffle=False,
        num_workers=0,
        drop_last=False,
    )
    loader = ShardLoader(cfg, rank=0, world=1)
    seen = [k for batch in loader for k in batch["key"]]
    # The pickle members were ignored (their samples are used); the pickled JSON is a bad sample
    # (skipped, counted once, and its place refilled from the shard).
    assert set(seen) == {k for k in keys if k != "k003"}
    assert loader.skipped == {kind: int(kind == "bad_json") for kind in SKIP_KINDS}
    assert not target.exists()


# -- recipes ---------------------------------------------------------------------------------


def test_yaml_python_tags_are_refused(tmp_path) -> None:
    target = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f'run:\n  out: !!python/object/apply:os.system ["touch {target}"]\n')
    with pytest.raises(ConfigError, match=r"evil\.yaml is not valid YAML.*python/object/apply"):
        load_config(recipe)
    with pytest.raises(ConfigError, match=r"--set .*not valid YAML.*python/object/new"):
        load_config(None, [f"run.out=!!python/object/new:os.system [touch {target}]"])
    assert not target.exists()


def test_unknown_keys_name_the_closest_valid_one(tmp_path, capsys) -> None:
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("optim:\n  lr: 1.0e-3\n  warmup_step: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.warmup_step'; did you mean "):
        load_config(recipe)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["checkpoint.keep_lats=2"])
    assert "'checkpoint.keep_lats'" in str(err.value) and "'keep_last'" in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown key 'optimm'; did you mean 'optim'"):
        load_config(None, ["optimm.lr=1"])
    # From the command line: exit status 2 and the same message, before anything is built.
    out = tmp_path / "never"
    assert run_cli(f"distill --config {recipe} --out {out}") == 2
    assert "did you mean 'warmup_steps'" in capsys.readouterr().err
    assert run_cli(f"predistill --out {out} --set optim.max_consecutive_skip=3") == 2
    assert "did you mean 'max_consecutive_skips'" in capsys.readouterr().err
    assert not out.exists()

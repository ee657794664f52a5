"""Start-up checks: a stage looks at every path it reads before building anything, and names
the recipe key; the built-in shards are written only where the built-in recipe keeps them."""

from __future__ import annotations

import types

import pytest
from helpers import run_cli

from vlcd_dist.config import load_config
from vlcd_dist.errors import ConfigError, DataError


def _no_build(*_args, **_kwargs):
    raise AssertionError("a backend was built before the inputs were checked")


@pytest.mark.parametrize(
    ("stage", "key"),
    [
        ("train-teacher", "data.placenta"),
        ("predistill", "data.natural"),
        ("distill", "data.placenta"),
        ("eval", "data.placenta"),
    ],
)
def test_a_mistyped_shard_folder_stops_the_stage_before_anything_is_built(
    stage, key, tiny_recipe, tmp_path, monkeypatch
):
    from vlcd_dist.train import eval_stage, stages, trainer

    monkeypatch.setattr(trainer, "create_backend", _no_build)
    monkeypatch.setattr(eval_stage, "create_backend", _no_build)
    monkeypatch.setattr(stages, "load_frozen_teacher", _no_build)
    typo = tmp_path / "placneta"
    cfg = load_config(tiny_recipe, [f"{key}={typo}", f"run.out={tmp_path / 'out'}"])
    with pytest.raises(DataError) as err:
        if stage == "eval":
            eval_stage.Evaluator(cfg)
        else:
            stages.create_stage(cfg, stage)
    assert str(err.value).startswith(f"{key}={str(typo)!r}: no such folder: {typo}")
    assert not (tmp_path / "out").exists()


def test_the_command_names_the_key_and_a_folder_without_sizes_json_says_so(
    tiny_recipe, tmp_path, capsys
):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = f"distill --config {tiny_recipe} --out {tmp_path / 'out'} --set data.placenta={empty}"
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert f"data.placenta='{empty}': {empty} has no sizes.json" in err
    assert run_cli(f"{argv[: argv.index('--set')]} --set data.placenta=http://host/placenta") == 2
    assert "data.placenta='http://host/placenta'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_checkpoints_and_init_folders_are_all_named_at_once(tiny_recipe, tmp_path):
    from vlcd_dist.train.preflight import check_stage_inputs

    cfg = load_config(
        tiny_recipe,
        [
            f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}",
            f"distill.init_from={tmp_path / 'predistill'}",
            f"students.1.init_from={tmp_path / 'mine'}",
        ],
    )
    with pytest.raises(ConfigError) as err:
        check_stage_inputs(cfg, "distill")
    text = str(err.value)
    for key in ("teacher.checkpoint", "distill.init_from", "students.1.init_from"):
        assert f"{key}=" in text
    assert "students.0.init_from" not in text  # unset: nothing to check
    (tmp_path / "teacher.safetensors").write_bytes(b"")
    (tmp_path / "predistill").mkdir()
    (tmp_path / "mine").mkdir()
    # The anchor cache: beside the teacher unless distill.anchors names another file.
    with pytest.raises(ConfigError, match="distill.anchors unset and no anchors.safetensors"):
        check_stage_inputs(cfg, "distill")
    cfg.distill.anchors = str(tmp_path / "anchors_typo.safetensors")
    with pytest.raises(ConfigError, match=r"distill\.anchors='.*anchors_typo"):
        check_stage_inputs(cfg, "distill")
    cfg.distill.anchors = None
    (tmp_path / "anchors.safetensors").write_bytes(b"")
    check_stage_inputs(cfg, "distill")  # all present: no error
    # eval reads the students from eval.students_from when it is set, and only from there.
    cfg.eval.students_from = str(tmp_path / "distill")
    with pytest.raises(ConfigError, match=r"eval\.students_from=") as err:
        check_stage_inputs(cfg, "eval")
    assert "init_from" not in str(err.value)


def _fake_writer(calls: list[list[str]]):
    """Stands in for the ``vlcd shards`` subprocess: records the command and writes a tiny
    shard set of the same kind at the same folder (in-process, seconds)."""

    def run(cmd, *args, **kwargs):
        calls.append(list(cmd))
        kind, out = cmd[4], cmd[cmd.index("--out") + 1]
        small = {
            "placenta": f"shards placenta --synthetic 12 --image-size 64x48 --shard-size 6 --out {out} --quiet",
            "natural": f"shards natural --source synthetic --count 8 --image-size 32 --shard-size 8 --out {out} --quiet",
        }[kind]
        return types.SimpleNamespace(returncode=run_cli(small))

    return run


def test_builtin_shards_are_written_only_at_the_builtin_recipes_own_folders(tmp_path, monkeypatch):
    from vlcd_dist.pipelines import builtin_data

    monkeypatch.chdir(tmp_path)
    calls: list[list[str]] = []
    monkeypatch.setattr(builtin_data.subprocess, "run", _fake_writer(calls))
    builtin_data.ensure_builtin_shards(load_config("demo"))
    assert [c[3:6] for c in calls] == [
        ["shards", "placenta", "--synthetic"],
        ["shards", "natural", "--count"],
    ]
    assert (tmp_path / "shards/demo/placenta/sizes.json").is_file()
    assert (tmp_path / "shards/demo/natural/sizes.json").is_file()
    builtin_data.ensure_builtin_shards(load_config("demo"))  # present: nothing rewritten
    assert len(calls) == 2
    # Any other missing folder, or a URL, is the user's error: nothing is written for it.
    for value in ("shards/demo/placenta2", "http://host/placenta"):
        with pytest.raises(DataError, match=rf"^data\.placenta='{value}': "):
            builtin_data.ensure_builtin_shards(load_config("demo", [f"data.placenta={value}"]))
    with pytest.raises(DataError, match=r"^data\.natural='nat': no such folder"):
        builtin_data.ensure_builtin_shards(load_config("demo", ["data.natural=nat"]))
    assert len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "shards/demo").iterdir()) == ["natural", "placenta"]
    assert not (tmp_path / "http:").exists() and not (tmp_path / "nat").exists()

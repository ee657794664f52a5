"""``vlcd sweep``: grid parsing, the per-point overrides, and a real 2-point sweep (in-process)."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from vlcd_dist.config import ConfigError
from vlcd_dist.errors import VlcdError
from vlcd_dist.pipelines import launch
from vlcd_dist.pipelines.sweep import grid_points, parse_grid, plan_sweep, split_values
from vlcd_dist.reporting.sweep import sweep_table

STUDENTS = ["tiny_mobilenetv3", "tiny_resnet"]


def test_grid_flags_parse_into_a_cartesian_product() -> None:
    assert split_values("0, 0.01,[96,128],{a: 1, b: 2}") == [
        "0",
        "0.01",
        "[96,128]",
        "{a: 1, b: 2}",
    ]
    axes = parse_grid(["loss.distill_lambda=0,0.01,10", "distill.init=predistilled,scratch"])
    points = grid_points(axes)
    assert len(points) == 6
    # The first axis varies slowest; names are folder-safe and distinct.
    assert [p.values["loss.distill_lambda"] for p in points] == [
        "0",
        "0",
        "0.01",
        "0.01",
        "10",
        "10",
    ]
    assert points[1].name == "distill_lambda-0__init-scratch"
    assert len({p.name for p in points}) == 6
    # Two axes ending in the same field keep their whole key in the name.
    clash = grid_points(parse_grid(["students.0.lr=1e-3", "students.1.lr=2e-3"]))
    assert clash[0].name == "students.0.lr-1e-3__students.1.lr-2e-3"


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("loss.distill_lambda", "expected KEY=V1,V2"),
        ("loss.distill_lambda=0,,1", "empty value"),
        ("loss.distill_lambda=1,1", "repeated"),
        ("predistill.steps=1,2", "trains the teacher and the predistillation once"),
        ("teacher.embed_dim=32,64", "shares them between the points"),
        ("run.out=a,b", "sets run.out itself"),
        ("distill.init=on,off", "predistilled and/or scratch"),
    ],
)
def test_bad_grid_flags_say_how_to_fix_them(flag, message) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid([flag])


def test_grid_keys_are_checked_against_the_recipe(tiny_recipe, tmp_path, capsys) -> None:
    with pytest.raises(
        ConfigError, match=r"--grid loss.distill_lambd=0: unknown key .*'distill_lambda'"
    ):
        plan_sweep(tiny_recipe, tmp_path, ["loss.distill_lambd=0,1"])
    with pytest.raises(ConfigError, match=r"--grid loss.distill_lambda=-1: .*>= 0"):
        plan_sweep(tiny_recipe, tmp_path, ["loss.distill_lambda=0,-1"])
    rc = run_cli(f"sweep --config {tiny_recipe} --out {tmp_path} --grid optim.lrr=1,2 --dry-run")
    assert rc == 2 and "did you mean 'lr'" in capsys.readouterr().err


def test_predistillation_on_and_off_map_to_init_from(tiny_recipe, tmp_path) -> None:
    plan = plan_sweep(
        tiny_recipe,
        tmp_path / "sweep",
        ["loss.distill_lambda=0.1", "distill.init=predistilled,scratch"],
        ["students.1.init_from=elsewhere"],
    )
    on, off = plan.points
    teacher = tmp_path / "sweep" / "teacher" / "export" / "teacher.safetensors"
    assert on.overrides == [
        "loss.distill_lambda=0.1",
        f"teacher.checkpoint={teacher}",
        f"distill.init_from={tmp_path / 'sweep' / 'predistill'}",
    ]
    # Scratch: no predistilled weights for any student, not even one given per student.
    assert off.overrides[-2:] == ["distill.init_from=null", "students.1.init_from=null"]
    assert plan.train_teacher and plan.train_predistill


def test_sweep_table_shows_val_and_test_and_highlights_by_val() -> None:
    # The test AUC is best at lambda 1, the validation AUC at lambda 0: the table highlights
    # the point chosen on validation (lambda 0), both its cells, never the best test cell.
    summary = {
        "grid": [{"key": "loss.distill_lambda", "values": ["0", "1"]}],
        "students": ["a"],
        "degrade": "tablet_camera at severities 1, 2",
        "points": [
            {
                "name": f"p{v}",
                "values": {"loss.distill_lambda": v},
                "report": "x",
                "val_auc_mean": {"a": 0.75 - int(v) / 10},
                "auc_mean": {"a": 0.7 + int(v) / 10},
                "degraded_auc_mean": {"a": 0.6},
                "teacher_auc_mean": 0.9,
            }
            for v in ("0", "1")
        ],
    }
    table = sweep_table(summary)
    assert table.header == ["distill_lambda", "a val", "a test", "a degraded"]
    assert table.rows == [["0", "0.750", "0.700", "0.600"], ["1", "0.650", "0.800", "0.600"]]
    assert table.bold == {(0, 1), (0, 2), (0, 3)}
    assert table.groups == [("", 1), ("a", 3)]
    # Markdown and the HTML template render these same cells; HTML names the columns under
    # their model group.
    assert [[c.text for c in row] for row in table.cells()] == table.rows
    assert [c.text for c in table.head()] == ["distill_lambda", "val", "test", "degraded"]
    assert table.markdown().splitlines()[2:] == [
        "| 0 | **0.750** | **0.700** | **0.600** |",
        "| 1 | 0.650 | 0.800 | 0.600 |",
    ]
    # Without a validation split nothing is chosen, so nothing is bold.
    for p in summary["points"]:
        p["val_auc_mean"] = {"a": None}
    assert sweep_table(summary).bold == set()


def test_two_point_sweep_runs_distill_and_eval_per_point(
    tiny_recipe, tiny_pipeline, tmp_path, monkeypatch
) -> None:
    # The stage commands run in this process (same argv as the subprocesses), which keeps the
    # test to seconds; the command lines themselves are checked.
    commands: list[list[str]] = []
    prefix = launch.launch_prefix(1)

    def in_process(cmd: list[str], env: dict[str, str]) -> int:
        assert cmd[: len(prefix)] == prefix
        commands.append(cmd[len(prefix) :])
        return run_cli(*cmd[len(prefix) :])

    monkeypatch.setattr(launch, "execute", in_process)
    out = tmp_path / "sweep"
    argv = (
        f"sweep --config {tiny_recipe} --out {out} --nproc 1 --from {tiny_pipeline['root']} "
        "--grid loss.distill_lambda=0,1 --set distill.steps=2 --set data.num_workers=0 --set eval.bootstrap=0"
    )
    assert run_cli(argv) == 0
    assert [c[0] for c in commands] == ["distill", "eval", "distill", "eval"]
    assert commands[0][commands[0].index("--out") + 1] == str(out / "distill_lambda-0" / "distill")
    assert "--resume" in commands[0] and "--resume" not in commands[1]
    assert f"distill.init_from={tiny_pipeline['predistill']}" in commands[0]

    summary = json.loads((out / "sweep.json").read_text())
    assert [p["values"] for p in summary["points"]] == [
        {"loss.distill_lambda": "0"},
        {"loss.distill_lambda": "1"},
    ]
    assert summary["students"] == STUDENTS
    for p in summary["points"]:
        report = json.loads((out / p["report"]).read_text())
        assert p["auc_mean"] == {s: report["models"][s]["auc_mean"] for s in STUDENTS}
    md = (out / "sweep.md").read_text()
    rows = [
        line for line in md.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")
    ]
    assert len(rows) == 2 and all(s in md for s in STUDENTS)
    assert (out / "sweep.png").stat().st_size > 1000
    assert all(s in (out / "sweep.svg").read_text() for s in STUDENTS)
    assert list((out / "tb").rglob("events.out.tfevents.*"))

    # A finished point is not rerun.
    commands.clear()
    assert run_cli(argv) == 0
    assert commands == []


def test_dry_run_prints_the_points_and_runs_nothing(tiny_recipe, tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    argv = f"sweep --config {tiny_recipe} --out {out} --grid loss.distill_lambda=0,1 --dry-run --degrade"
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'distill_lambda-1'}: --set loss.distill_lambda=1" in printed
    assert "eval.degrade.enabled=true" in printed and "(trained first)" in printed
    assert not out.exists()


def test_a_finished_stage_is_recognised_whether_or_not_it_was_resumed(tmp_path) -> None:
    # Training stages run with --resume, which the recipe they write records.
    folder = tmp_path / "distill"
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    (folder / "config.yaml").write_text("checkpoint: {every_steps: 2, resume: true}\n")
    assert launch._finished("distill", folder, "checkpoint: {every_steps: 2, resume: false}\n")
    assert not launch._finished("distill", folder, "checkpoint: {every_steps: 3, resume: false}\n")


def test_a_stage_stopped_before_finishing_stops_the_pipeline(tiny_recipe, tmp_path, monkeypatch):
    # A preempted stage exits with status 0 after its checkpoint, without summary.json.
    ran: list[str] = []
    monkeypatch.setattr(launch, "execute", lambda cmd, env: ran.append(cmd[-1]) or 0)
    with pytest.raises(VlcdError, match=r"stage distill stopped before finishing .*summary.json"):
        launch.run_stage("distill", tmp_path / "distill", tiny_recipe, [], 1, {}, "the sweep")
    assert ran == ["--resume"]


def test_an_eval_report_of_another_version_is_not_a_finished_eval(tmp_path) -> None:
    # A report.json of the previous format (no "format" field) would stop the pipeline later,
    # when the demo or the sweep reads it: the eval runs again instead.
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "config.yaml").write_text("a: 1\n")
    (folder / "report.json").write_text('{"tasks": [], "models": {}}')
    assert not launch._finished("eval", folder, "a: 1\n")
    (folder / "report.json").write_text("{")  # cut short
    assert not launch._finished("eval", folder, "a: 1\n")

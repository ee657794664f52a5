"""``vlcd sweep``: one ``distill`` (every student at once) and one ``eval`` per point of a grid.

    vlcd sweep --config demo --out runs/sweep \\
        --grid loss.distill_lambda=0,0.01,0.1,1,10 --grid distill.init=predistilled,scratch

Each ``--grid KEY=V1,V2,...`` is an axis; the points are their cartesian product (the first
axis varies slowest). KEY is any recipe field, as for ``--set`` (values are YAML; a value
holding commas goes in brackets, ``[96,128]``), or ``distill.init``, which takes
``predistilled`` (the students start from the predistillation, ``distill.init_from``) or
``scratch`` (``distill.init_from`` and every ``students.N.init_from`` null: the students start
from their configured initialisation). Without a ``distill.init`` axis every point is
predistilled, as in ``vlcd demo``.

The teacher and the predistillation do not depend on the swept values: they are trained once,
in ``OUT/teacher`` and ``OUT/predistill``, unless the recipe already names them
(``teacher.checkpoint``, ``distill.init_from``) or ``--from RUN`` points at a run holding
``teacher/`` and ``predistill/`` (a ``vlcd demo`` folder). Grid values therefore reach the
distill and eval stages only; keys of ``train_teacher`` and ``predistill`` are refused.

Every stage is the command a user would type, started like the demo's
(:func:`vlcd_dist.pipelines.launch.run_stage`): a finished stage of the same resolved recipe is not
rerun, an interrupted one resumes, so rerunning the sweep continues where it stopped. Point
``P`` lives in ``OUT/<P>/distill`` and ``OUT/<P>/eval``; at the end the sweep writes
``OUT/sweep.json`` (every point's values, overrides, validation and test AUCs and paired
comparisons with the teacher), ``OUT/sweep.md`` (a table: point x student mean AUC on the
validation rows and the test split, and, when the eval ran ``--degrade``, degraded; the point
with the best validation AUC in bold), ``OUT/sweep.png``
(mean AUC against the swept value, a line per student and predistillation setting) and
TensorBoard logs in ``OUT/tb`` (one hparams run per point).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlcd_dist.config import ConfigError, load_config, resolve_recipe
from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.results import EvalReport
from vlcd_dist.pipelines.builtin_data import ensure_builtin_shards
from vlcd_dist.pipelines.launch import default_nproc, run_stage, stage_env
from vlcd_dist.reporting.sweep import INIT_KEY, sweep_table, write_outputs

INIT_VALUES = ("predistilled", "scratch")
# Sections read only by the stages the sweep runs once (the teacher, the predistillation), and
# fields the sweep sets itself.
SHARED_PREFIXES = ("teacher", "train_teacher", "predistill")
OWN_KEYS = ("run.out", "eval.students_from")


@dataclass
class Axis:
    """One ``--grid`` flag: a recipe key and the values it takes (YAML texts, as typed)."""

    key: str
    values: list[str]


@dataclass
class Point:
    """One grid point: its folder name and {key: value text} over every axis."""

    name: str
    values: dict[str, str]
    overrides: list[str] = field(default_factory=list)
    """The --set items of its distill and eval stages, after the sweep's own --set items."""


def split_values(text: str) -> list[str]:
    """'0,0.1,[96,128]' -> ['0', '0.1', '[96,128]']: commas inside brackets or braces stay."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(items: list[str]) -> list[Axis]:
    """The axes of ``--grid KEY=V1,V2,...`` flags; ConfigError says what is wrong with one."""
    axes: list[Axis] = []
    for item in items:
        if "=" not in item:
            raise ConfigError(
                f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid loss.distill_lambda=0,0.1,1"
            )
        key, raw = item.split("=", 1)
        key = key.strip()
        values = split_values(raw)
        if not key:
            raise ConfigError(f"--grid {item!r}: the key is empty")
        if any(v == "" for v in values):
            raise ConfigError(f"--grid {item!r}: an empty value; separate values by single commas")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {item!r}: a value is repeated")
        if any(a.key == key for a in axes):
            raise ConfigError(f"--grid {key}: given twice; put every value in one --grid flag")
        if key.split(".")[0] in SHARED_PREFIXES or key == "data.natural":
            raise ConfigError(
                f"--grid {key}: the sweep trains the teacher and the predistillation once and "
                "shares them between the points, so this cannot vary; set it with --set, or run "
                "one sweep per value"
            )
        if key in OWN_KEYS:
            raise ConfigError(f"--grid {key}: the sweep sets {key} itself (one folder per point)")
        if key == INIT_KEY:
            bad = [v for v in values if v not in INIT_VALUES]
            if bad:
                raise ConfigError(
                    f"--grid {INIT_KEY}={','.join(values)}: {bad} not understood; use "
                    f"{' and/or '.join(INIT_VALUES)} (with or without predistillation)"
                )
        axes.append(Axis(key, values))
    keys = {a.key for a in axes}
    if INIT_KEY in keys and "distill.init_from" in keys:
        raise ConfigError(
            f"--grid {INIT_KEY} and --grid distill.init_from both choose where the students "
            "start; keep one"
        )
    return axes


def _short(key: str, axes: list[Axis]) -> str:
    last = key.split(".")[-1]
    if key == INIT_KEY:
        return "init"
    clash = sum(1 for a in axes if a.key.split(".")[-1] == last) > 1
    return key if clash else last


def _clean(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", value).strip("_") or "empty"


def grid_points(axes: list[Axis]) -> list[Point]:
    """The cartesian product of the axes, first axis slowest, each with a distinct folder name
    such as ``distill_lambda-0.1__init-scratch``."""
    points, seen = [], set()
    for combo in itertools.product(*(a.values for a in axes)):
        values = {a.key: v for a, v in zip(axes, combo, strict=True)}
        name = "__".join(f"{_short(k, axes)}-{_clean(v)}" for k, v in values.items())
        base, n = name, 2
        while name in seen:
            name, n = f"{base}_{n}", n + 1
        seen.add(name)
        points.append(Point(name, values))
    return points


@dataclass
class Plan:
    """What the sweep runs: the upstream folders, the points and their overrides."""

    config: Path
    out: Path
    sets: list[str]
    axes: list[Axis]
    points: list[Point]
    teacher: str
    """teacher.checkpoint of every point (the recipe's, or trained by the sweep, or --from's)."""
    predistill: str | None
    """Folder of the predistilled students (None when no point needs it)."""
    train_teacher: bool
    train_predistill: bool


def plan_sweep(
    config: Path,
    out: Path,
    grid: list[str],
    sets: list[str] | tuple[str, ...] = (),
    source: Path | None = None,
) -> Plan:
    """Validate the grid against the recipe and work out every stage's overrides, before
    anything runs (a bad key or value fails here, naming the --grid flag)."""
    config, out, sets = resolve_recipe(config), Path(out), list(sets)
    axes = parse_grid(grid)
    if not axes:
        raise ConfigError("sweep: give at least one --grid KEY=V1,V2,...")
    base = load_config(config, sets)
    for axis in axes:
        if axis.key == INIT_KEY:
            continue
        for value in axis.values:
            try:
                load_config(config, [*sets, f"{axis.key}={value}"])
            except ConfigError as exn:
                raise ConfigError(f"--grid {axis.key}={value}: {exn}") from exn

    source = Path(source) if source is not None else None
    teacher = base.teacher.checkpoint or str(
        (source or out) / "teacher" / "export" / "teacher.safetensors"
    )
    predistill_dir = base.distill.init_from or str((source or out) / "predistill")

    points = grid_points(axes)
    needs_teacher = needs_predistill = False
    for point in points:
        grid_sets = [f"{k}={v}" for k, v in point.values.items() if k != INIT_KEY]
        resolved = load_config(config, [*sets, *grid_sets])
        extra: list[str] = []
        if resolved.teacher.checkpoint is None:
            extra.append(f"teacher.checkpoint={teacher}")
            needs_teacher = True
        if point.values.get(INIT_KEY, "predistilled") == "scratch":
            extra.append("distill.init_from=null")
            extra += [
                f"students.{i}.init_from=null"
                for i, s in enumerate(resolved.students)
                if s.init_from is not None
            ]
        elif resolved.distill.init_from is None:
            extra.append(f"distill.init_from={predistill_dir}")
            needs_predistill = True
        point.overrides = [*grid_sets, *extra]
        try:
            load_config(config, [*sets, *point.overrides])
        except ConfigError as exn:
            raise ConfigError(f"sweep point {point.name}: {exn}") from exn
    if source is not None:
        if needs_teacher and not Path(teacher).is_file():
            raise VlcdError(f"sweep --from {source}: no teacher at {teacher}")
        if needs_predistill and not (Path(predistill_dir) / "export").is_dir():
            raise VlcdError(
                f"sweep --from {source}: no predistilled students in {predistill_dir}/export"
            )
    return Plan(
        config=config,
        out=out,
        sets=sets,
        axes=axes,
        points=points,
        teacher=teacher,
        predistill=predistill_dir if needs_predistill else None,
        train_teacher=source is None and needs_teacher,
        train_predistill=source is None and base.distill.init_from is None and needs_predistill,
    )


def run_sweep(
    config: Path,
    out: Path,
    grid: list[str],
    sets: list[str] | tuple[str, ...] = (),
    nproc: int | None = None,
    source: Path | None = None,
    dry_run: bool = False,
    eval_sets: list[str] | tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """Run (or, with ``dry_run``, print) the sweep and write its summary. ``eval_sets`` are
    overrides of the eval stages only (``--degrade``). Returns sweep.json's content (None on a
    dry run)."""
    plan = plan_sweep(config, out, grid, sets, source)
    if eval_sets:
        load_config(plan.config, [*plan.sets, *eval_sets])
    print(
        f"==> vlcd sweep: {len(plan.points)} point(s) "
        f"({' x '.join(f'{a.key}: {len(a.values)}' for a in plan.axes)}), output {plan.out}",
        flush=True,
    )
    if dry_run:
        print(f"teacher: {plan.teacher}" + (" (trained first)" if plan.train_teacher else ""))
        if plan.predistill:
            print(
                f"predistill: {plan.predistill}" + (" (run first)" if plan.train_predistill else "")
            )
        for p in plan.points:
            print(f"{plan.out / p.name}: " + " ".join(f"--set {s}" for s in p.overrides))
        if eval_sets:
            print("eval stages also: " + " ".join(f"--set {s}" for s in eval_sets))
        return None
    ensure_builtin_shards(load_config(plan.config, plan.sets))
    nproc = nproc or default_nproc()
    env = stage_env(nproc)
    rerun = "the same vlcd sweep command"
    if plan.train_teacher:
        run_stage("train-teacher", plan.out / "teacher", plan.config, plan.sets, nproc, env, rerun)
    if plan.train_predistill:
        sets = [*plan.sets]
        if load_config(plan.config, plan.sets).teacher.checkpoint is None:
            sets.append(f"teacher.checkpoint={plan.teacher}")
        run_stage("predistill", plan.out / "predistill", plan.config, sets, nproc, env, rerun)
    for i, point in enumerate(plan.points, 1):
        folder = plan.out / point.name
        print(f"==> point {i}/{len(plan.points)}: {point.name}", flush=True)
        sets = [*plan.sets, *point.overrides]
        run_stage("distill", folder / "distill", plan.config, sets, nproc, env, rerun)
        sets += [f"eval.students_from={folder / 'distill'}", *eval_sets]
        run_stage("eval", folder / "eval", plan.config, sets, nproc, env, rerun)
    summary = summarize(plan)
    write_outputs(plan.out, summary)
    print()
    print(sweep_table(summary).markdown())
    print(f"sweep: {plan.out / 'sweep.md'}, {plan.out / 'sweep.png'}, {plan.out / 'sweep.json'}")
    print(f"TensorBoard: tensorboard --logdir {plan.out / 'tb'} (HPARAMS tab)")
    return summary


# ---------------------------------------------------------------------------------------------
# Summary, table and plot


def summarize(plan: Plan) -> dict[str, Any]:
    """sweep.json: the grid, and per point its values, overrides and AUCs (from eval)."""
    points, students, tasks, degrade = [], [], [], None
    for p in plan.points:
        path = plan.out / p.name / "eval" / "report.json"
        entry: dict[str, Any] = {
            "name": p.name,
            "values": p.values,
            "overrides": p.overrides,
            "report": f"{p.name}/eval/report.json" if path.is_file() else None,
        }
        if path.is_file():
            report = EvalReport.load(path)
            models = report.models
            tasks = tasks or list(report.tasks)
            names = [n for n, r in models.items() if r.kind == "student"]
            students += [n for n in names if n not in students]
            entry["auc_mean"] = {n: models[n].auc_mean for n in names}
            entry["val_auc_mean"] = {n: models[n].val_auc_mean for n in names}
            entry["auc"] = {n: models[n].auc for n in names}
            entry["vs_teacher"] = {
                n: {
                    k: {"delta": p.delta, "ci": list(p.ci) if p.ci else None, "matches": p.matches}
                    for k, p in models[n].vs_teacher.items()
                }
                for n in names
            }
            entry["latency_ms"] = {n: models[n].latency_ms for n in names}
            teacher = models.get("teacher")
            entry["teacher_auc_mean"] = teacher.auc_mean if teacher else None
            entry["teacher_val_auc_mean"] = teacher.val_auc_mean if teacher else None
            if report.degrade is not None:
                entry["degraded_auc_mean"] = {n: report.degraded_mean(n) for n in names}
                entry["teacher_degraded_auc_mean"] = report.degraded_mean("teacher")
                degrade = degrade or report.degrade.description()
        points.append(entry)
    return {
        "recipe": str(plan.config),
        "overrides": plan.sets,
        "grid": [{"key": a.key, "values": a.values} for a in plan.axes],
        "teacher": plan.teacher,
        "predistill": plan.predistill,
        "tasks": tasks,
        "students": students,
        "degrade": degrade,
        "points": points,
    }

"""``vlcd demo``: the whole method on the built-in data, one stage after another.

1. Writes the built-in shards when absent (synthetic placenta pairs; natural crops of the
   scikit-image photographs).
2. Runs ``train-teacher``, ``predistill``, ``distill`` and ``eval`` with the demo recipe, each
   as its own ``accelerate launch`` of ``python -m vlcd_dist`` (or a plain process for one rank),
   exactly the commands a user would type; each stage's output folder feeds the next.
3. Prints the report table, writes the HTML report (``vlcd report``) into ``OUT/report/`` and
   says where it and the TensorBoard logs are.

A stage whose output already holds a finished run of the same resolved recipe is not rerun, and
an interrupted stage continues from its newest checkpoint (``--resume``).
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vlcd_dist.errors import VlcdError
from vlcd_dist.train.config import TrainConfig, dump_yaml, load_config

REPO = Path(__file__).resolve().parents[2]
DEMO_RECIPE = REPO / "configs" / "demo.yaml"
PLACENTA_SYNTHETIC = 2000
NATURAL_COUNT = 5000


def default_nproc() -> int:
    """The GPU count, else 2 ranks when the host has at least 2 CPUs, else 1."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_prefix(nproc: int) -> list[str]:
    """The command that starts ``nproc`` ranks of ``python -m vlcd_dist``.

    ``--multi_gpu`` also on CPU: with ``Accelerator(cpu=True)`` it gives ``nproc`` gloo ranks,
    whereas a MULTI_CPU config starts one process and expects mpirun (DESIGN.md section 8).
    """
    if nproc <= 1:
        return [sys.executable, "-m", "vlcd_dist"]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "vlcd_dist",
    ]


def ensure_shards(cfg: TrainConfig) -> None:
    """Write the built-in shard sets named by the recipe when they are missing."""
    from vlcd_dist.cli import main as vlcd

    placenta, natural = Path(cfg.data.placenta), Path(cfg.data.natural)
    jobs = [
        (placenta, ["shards", "placenta", "--synthetic", str(PLACENTA_SYNTHETIC)]),
        (natural, ["shards", "natural", "--count", str(NATURAL_COUNT)]),
    ]
    for folder, argv in jobs:
        if (folder / "sizes.json").is_file():
            continue
        print(f"==> writing the built-in shards: vlcd {' '.join(argv)} --out {folder}", flush=True)
        if vlcd([*argv, "--out", str(folder)]) != 0:
            raise VlcdError(f"could not write the demo shards into {folder}")


def _stage_plan(out: Path) -> list[tuple[str, Path, list[str]]]:
    teacher = out / "teacher" / "export" / "teacher.safetensors"
    return [
        ("train-teacher", out / "teacher", []),
        ("predistill", out / "predistill", [f"teacher.checkpoint={teacher}"]),
        (
            "distill",
            out / "distill",
            [f"teacher.checkpoint={teacher}", f"distill.init_from={out / 'predistill'}"],
        ),
        (
            "eval",
            out / "eval",
            [f"teacher.checkpoint={teacher}", f"eval.students_from={out / 'distill'}"],
        ),
    ]


def _done_file(stage: str, folder: Path) -> Path:
    """The file a stage writes last, when it has finished (not after a preemption stop)."""
    return folder / ("report.json" if stage == "eval" else "summary.json")


def _finished(stage: str, folder: Path, resolved: str) -> bool:
    """True when ``folder`` holds a finished ``stage`` run of this very recipe.

    ``checkpoint.resume`` is left out of the comparison: ``--resume`` sets it in the recipe a
    stage writes, and whether a run was resumed does not change what it computed."""
    done = _done_file(stage, folder)
    written = folder / "config.yaml"
    if not (done.is_file() and written.is_file()):
        return False

    def recipe(text: str) -> object:
        data = yaml.safe_load(text)
        if isinstance(data, dict) and isinstance(data.get("checkpoint"), dict):
            data["checkpoint"].pop("resume", None)
        return data

    return recipe(written.read_text()) == recipe(resolved)


def stage_env(nproc: int) -> dict[str, str]:
    """The environment of the stage processes: offline hub, threads split between the ranks."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def execute(cmd: list[str], env: dict[str, str]) -> int:
    """Run one stage command and return its exit status (tests swap in an in-process run)."""
    return subprocess.run(cmd, env=env).returncode


def run_stage(
    stage: str,
    folder: Path,
    config: Path,
    sets: list[str],
    nproc: int,
    env: dict[str, str],
    rerun: str = "the demo",
) -> bool:
    """Run ``vlcd <stage>`` into ``folder`` under the launch prefix, unless ``folder`` already
    holds a finished run of the same resolved recipe. Every stage but eval passes ``--resume``,
    so an interrupted one continues from its newest checkpoint. Returns whether it ran; raises
    VlcdError when the stage fails (``rerun`` names what to rerun in the message)."""
    resolved = load_config(config, sets)
    resolved.run.out = str(folder)
    if _finished(stage, folder, dump_yaml(resolved)):
        print(f"==> {stage}: already done in {folder} (delete it to rerun)", flush=True)
        return False
    cmd = [*launch_prefix(nproc), stage, "--config", str(config), "--out", str(folder)]
    for item in sets:
        cmd += ["--set", item]
    if stage != "eval":
        cmd.append("--resume")
    print(f"==> {stage}: {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = execute(cmd, env)
    if rc != 0:
        raise VlcdError(
            f"stage {stage} failed with exit status {rc}; fix the cause above and rerun "
            f"{rerun} (finished stages are kept, this one resumes from its checkpoint)"
        )
    done = _done_file(stage, folder)
    if not done.is_file():
        # Exit status 0 without it: the stage was preempted (run.preempt_signal) and saved a
        # checkpoint to resume from; the next stage must not start without its input.
        raise VlcdError(
            f"stage {stage} stopped before finishing (no {done.name} in {folder}; a preemption "
            f"signal stops a stage after a checkpoint): rerun {rerun} to resume it"
        )
    print(f"==> {stage}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    return True


def run_demo(
    out: Path,
    nproc: int | None = None,
    config: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> int:
    """Run every stage on the built-in data, print the report and write the HTML report.
    Returns an exit status."""
    from vlcd_dist.train.report import write_report

    config = Path(config) if config is not None else DEMO_RECIPE
    if not config.is_file():
        raise VlcdError(f"demo recipe {config} not found; pass --config configs/demo.yaml")
    out = Path(out)
    cfg = load_config(config, overrides)
    ensure_shards(cfg)
    nproc = nproc or default_nproc()
    env = stage_env(nproc)
    started = time.perf_counter()
    print(f"==> vlcd demo: {nproc} rank(s), recipe {config}, output {out}", flush=True)
    for stage, folder, extra in _stage_plan(out):
        run_stage(stage, folder, config, [*overrides, *extra], nproc, env)
    report_md = out / "eval" / "report.md"
    print()
    print(report_md.read_text())
    _print_verdict(out / "eval" / "report.json")
    html = write_report(out)
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"report: {report_md} (and report.json, auc.png, roc.png beside it)")
    print(f"HTML report: {html} (open it in a browser; `vlcd report {out}` rewrites it)")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return 0


def _print_verdict(path: Path) -> None:
    import json

    report = json.loads(path.read_text())
    models = report["models"]
    teacher = models.get("teacher")
    if teacher is None:
        return
    print(f"teacher mean test AUC: {teacher['auc_mean']:.3f}")
    for name, r in models.items():
        if r["kind"] == "student":
            delta = r["auc_mean"] - teacher["auc_mean"]
            print(
                f"  {name}: {r['auc_mean']:.3f} ({delta:+.3f} vs teacher, "
                f"{r['speedup']:.1f}x faster)"
            )

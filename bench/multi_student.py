"""Several students under one teacher forward versus the same students one after another.

Runs the real distillation step (vlcd_dist.train.stages.DistillTrainer, VLCD loss, AdamW,
clipping) in one process on a few real batches, reused so that data loading is not measured:

* T: the frozen teacher's forward of one batch, alone;
* S_k: one student's step (forward, loss, backward, clip, update) given the teacher's features;
* together: one multi-student step (one teacher forward shared by all K students);
* one after another: K single-student steps, each with its own teacher forward (what K
  separate runs would cost per step).

Prints the medians, the measured speed-up (one after another / together) and the ideal one,
(K*T + sum S_k) / (T + sum S_k): what sharing the teacher saves if nothing else costs anything.
The measured speed-up should come within 10% of the ideal (ratio >= 0.9).

    python bench/multi_student.py                      # demo architectures at 64x64, batch 16
    python bench/multi_student.py --size 96 128 --batch 32 --repeats 7
    python bench/multi_student.py --size 224 224 --batch 64 --mixed-precision bf16   # a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from vlcd_dist.cli import main as vlcd  # noqa: E402
from vlcd_dist.config import StudentSpec, TrainConfig  # noqa: E402
from vlcd_dist.models import create_teacher, save_teacher  # noqa: E402
from vlcd_dist.train.stages import (  # noqa: E402
    ANCHOR_FILE,
    DistillTrainer,
    build_anchors,
    build_teacher_config,  # noqa: E402
)

STUDENTS = ("mobilenetv3_large_100", "efficientnet_b0", "efficientformer_l1")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions of each figure")
    ap.add_argument("--teacher", default="resnet50_minilm")
    ap.add_argument("--students", nargs="+", default=list(STUDENTS))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="eager only (by default every figure is measured eager and with run.compile)",
    )
    ap.add_argument(
        "--mixed-precision",
        choices=("no", "bf16", "fp16"),
        default="no",
        help="students' autocast (run.mixed_precision); the teacher runs in the same dtype",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = root / "placenta"
        vlcd(
            [
                "shards",
                "placenta",
                "--synthetic",
                str(max(64, 4 * args.batch)),  # the train split must hold 2 batches
                "--image-size",
                "128x96",
                "--shard-size",
                "16",
                "--out",
                str(shards),
                "--quiet",
                "--workers",
                "1",
            ]
        )
        cfg = TrainConfig()
        cfg.run.out = str(root / "run")
        cfg.run.channels_last = args.channels_last
        cfg.data.placenta = str(shards)
        cfg.data.image_size = tuple(args.size)
        cfg.data.batch_size = args.batch
        cfg.data.num_workers = 0
        cfg.teacher.preset = args.teacher
        cfg.teacher.image_weights = "random"
        dtypes = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}
        cfg.run.mixed_precision = args.mixed_precision
        cfg.teacher.autocast_dtype = dtypes[args.mixed_precision]
        cfg.students = [StudentSpec(name) for name in args.students]
        cfg.logging.tensorboard = cfg.logging.progress = False
        # A teacher checkpoint and its anchors, as train-teacher would leave them.
        teacher = create_teacher(build_teacher_config(cfg))
        teacher_file = save_teacher(teacher, root / "teacher" / "teacher.safetensors")
        build_anchors(
            teacher,
            str(shards),
            teacher_file.parent / ANCHOR_FILE,
            autocast_dtype="float32",
            batch_size=64,
        )
        cfg.teacher.checkpoint = str(teacher_file)
        del teacher
        results = {}
        for variant in ("eager", "compiled") if args.compile else ("eager",):
            cfg.run.compile = variant == "compiled"
            cfg.run.out = str(root / f"run-{variant}")
            results[variant] = _measure(cfg, args.repeats)
    _report(results, args)
    return 0


def _measure(cfg: TrainConfig, repeats: int) -> dict[str, object]:
    """The figures of one variant (eager or compiled): first step, T, each S_k, together and
    one after another (medians of ``repeats`` after a warm-up)."""
    trainer = DistillTrainer(cfg, "distill")
    trainer.build()
    all_trainees = list(trainer.trainees)
    for t in all_trainees:
        t.model.train()
    batches = []
    for batch in trainer.loader:
        batches.append(batch)
        if len(batches) == 2:
            break
    cursor = {"i": 0}

    def next_batch():
        cursor["i"] += 1
        return [batches[cursor["i"] % len(batches)]]

    def together():
        trainer.trainees = all_trainees
        trainer.train_step(next_batch())

    def one_after_another():
        for t in all_trainees:
            trainer.trainees = [t]
            trainer.train_step(next_batch())
        trainer.trainees = all_trainees

    def teacher_forward():
        trainer.targets(next_batch()[0])

    # The first step: compiling included, when compiled.
    _sync()
    t0 = time.perf_counter()
    together()
    _sync()
    first = time.perf_counter() - t0
    targets = trainer.targets(batches[0])

    def student_step(t):
        def run():
            trainer.student_step(t, targets, sync=True, scale=1.0)
            trainer.backend.clip_grad(t, cfg.optim.clip_grad_norm)
            trainer.backend.step(t)

        return run

    for _ in range(2):  # warm-up: allocator, oneDNN kernels, optimizer state
        together()
        one_after_another()
    return {
        "first": first,
        "teacher": _median_time(teacher_forward, repeats),
        "students": {t.name: _median_time(student_step(t), repeats) for t in all_trainees},
        "together": _median_time(together, repeats),
        "sequence": _median_time(one_after_another, repeats),
    }


def _report(results: dict[str, dict], args: argparse.Namespace) -> None:
    names = list(results)
    first = results[names[0]]
    k = len(first["students"])
    h, w = args.size
    print(
        f"multi-student step: teacher {args.teacher}, {k} students, batch {args.batch} at "
        f"{h}x{w}, precision {args.mixed_precision}, on "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'} "
        f"({torch.get_num_threads()} CPU thread(s)), median of {args.repeats}; ms"
    )
    ratio = len(names) == 2
    header = "".join(f"{n:>11}" for n in names) + ("   compiled/eager" if ratio else "")
    print(f"  {'':<40}{header}")

    def row(label: str, values: list[float]) -> None:
        cells = "".join(f"{v * 1000:11.1f}" for v in values)
        tail = f"   {values[1] / values[0]:10.2f}x" if ratio else ""
        print(f"  {label:<40}{cells}{tail}")

    row("first step (compiling, when compiled)", [results[n]["first"] for n in names])
    row("teacher forward T", [results[n]["teacher"] for n in names])
    for student in first["students"]:
        row(f"student step S ({student})", [results[n]["students"][student] for n in names])
    row("K students together (T + sum S)", [results[n]["together"] for n in names])
    row("K students one after another", [results[n]["sequence"] for n in names])
    for n in names:
        r = results[n]
        s_sum = sum(r["students"].values())
        ideal = (k * r["teacher"] + s_sum) / (r["teacher"] + s_sum)
        measured = r["sequence"] / r["together"]
        print(
            f"  {n}: together / (T + sum S) = {r['together'] / (r['teacher'] + s_sum):.2f}; "
            f"speed-up over one after another measured {measured:.2f}x, ideal "
            f"(K T + sum S) / (T + sum S) = {ideal:.2f}x, ratio {measured / ideal:.2f} "
            "(target >= 0.90)"
        )


if __name__ == "__main__":
    sys.exit(main())

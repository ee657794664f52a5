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
        t_teacher = _median_time(teacher_forward, args.repeats)
        t_students = {t.name: _median_time(student_step(t), args.repeats) for t in all_trainees}
        t_together = _median_time(together, args.repeats)
        t_sequence = _median_time(one_after_another, args.repeats)
    k = len(all_trainees)
    s_sum = sum(t_students.values())
    ideal = (k * t_teacher + s_sum) / (t_teacher + s_sum)
    measured = t_sequence / t_together
    h, w = args.size
    print(
        f"multi-student step: teacher {args.teacher}, {k} students, batch {args.batch} at "
        f"{h}x{w}, precision {args.mixed_precision}, on "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'} "
        f"({torch.get_num_threads()} CPU thread(s)), median of {args.repeats}"
    )
    print(f"  teacher forward T             {t_teacher * 1000:8.1f} ms")
    for name, value in t_students.items():
        print(f"  student step S ({name:<22}) {value * 1000:8.1f} ms")
    together_ideal = (t_teacher + s_sum) * 1000
    sequence_ideal = (k * t_teacher + s_sum) * 1000
    print(
        f"  K students together           {t_together * 1000:8.1f} ms/step"
        f"   (T + sum S = {together_ideal:.1f})"
    )
    print(
        f"  K students one after another  {t_sequence * 1000:8.1f} ms/step"
        f"   (K T + sum S = {sequence_ideal:.1f})"
    )
    print(
        f"  speed-up measured {measured:.2f}x, ideal {ideal:.2f}x, "
        f"ratio {measured / ideal:.2f} (target >= 0.90)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a distillation step's time goes: several students under one teacher forward versus
the same students one after another, with a live teacher or from the teacher-feature cache,
each eager and compiled (run.compile), all side by side in one run.

Runs the real distillation step (vlcd_dist.train.stages.DistillTrainer, VLCD loss, AdamW,
clipping) in one process on a few real batches, reused so that data loading is not measured.
Variants: eager, cached eager (z_T read from a cache written by vlcd cache-teacher, the
teacher's image tower never built), and (unless --no-compile) compiled and cached compiled.
The figures are measured in turns, each turn timing every figure of every variant once, so
that a change in the machine's load falls on all alike; the medians over the turns:

* first step: the first multi-student step (compiling included, when compiled);
* T: the frozen teacher's forward of one batch, alone (cached: the cache lookup);
* S_k: one student's step (forward, loss, backward, clip, update) given the teacher's features;
* together: one multi-student step (one teacher forward shared by all K students);
* one after another: K single-student steps, each with its own teacher forward (what K
  separate runs would cost per step).

Prints the medians; for live variants the measured speed-up (one after another / together)
against the ideal (K*T + sum S_k) / (T + sum S_k), what sharing the teacher saves if nothing
else costs anything (target: within 10%, ratio >= 0.9); for cached ones the step time against
sum S_k (ideal 1: no teacher at all) and the saving over the live step; compiled / eager per
student.

    python bench/multi_student.py                      # demo architectures at 64x64, batch 16
    python bench/multi_student.py --size 96 128 --batch 32 --repeats 7 --no-compile
    python bench/multi_student.py --size 224 224 --batch 64 --mixed-precision bf16   # a GPU
"""

from __future__ import annotations

import argparse
import copy
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
    load_frozen_teacher,
)
from vlcd_dist.train.teacher_cache import write_cache  # noqa: E402

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
    ap.add_argument("--views", type=int, default=2, help="views per sample in the teacher cache")
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
        # The teacher-feature cache of the same shards, as `vlcd cache-teacher` writes it.
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cache = write_cache(
            cfg,
            load_frozen_teacher(cfg, device),
            stage="distill",
            views=args.views,
            out=root / "cache",
            dtype="fp32",
        )
        variants = {}
        for compiled in (False, True) if args.compile else (False,):
            for cached in (False, True):
                name = ("cached " if cached else "") + ("compiled" if compiled else "eager")
                variant_cfg = copy.deepcopy(cfg)
                variant_cfg.run.compile = compiled
                variant_cfg.run.out = str(root / f"run-{name.replace(' ', '-')}")
                if cached:
                    variant_cfg.teacher.cache = str(cache)
                    variant_cfg.data.views = args.views
                variants[name] = Variant(variant_cfg)
        results = _measure(variants, args.repeats)
    _report(results, args)
    return 0


class Variant:
    """One way of running the step (eager or compiled): its trainer, two real batches reused,
    and the functions whose times are the figures."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.trainer = DistillTrainer(cfg, "distill")
        self.trainer.build()
        self.trainees = list(self.trainer.trainees)
        for t in self.trainees:
            t.model.train()
        self.batches = []
        for batch in self.trainer.loader:
            self.batches.append(batch)
            if len(self.batches) == 2:
                break
        self.i = 0
        self.targets = None

    def next_batch(self) -> list[dict]:
        self.i += 1
        return [self.batches[self.i % len(self.batches)]]

    def together(self) -> None:
        self.trainer.trainees = self.trainees
        self.trainer.train_step(self.next_batch())

    def one_after_another(self) -> None:
        for t in self.trainees:
            self.trainer.trainees = [t]
            self.trainer.train_step(self.next_batch())
        self.trainer.trainees = self.trainees

    def teacher_forward(self) -> None:
        self.trainer.targets(self.next_batch()[0])

    def student_step(self, index: int):
        trainer, trainee = self.trainer, self.trainees[index]

        def run() -> None:
            if self.targets is None:
                self.targets = trainer.targets(self.batches[0])
            trainer.student_step(trainee, self.targets, sync=True, scale=1.0)
            trainer.backend.clip_grad(trainee, self.cfg.optim.clip_grad_norm)
            trainer.backend.step(trainee)

        return run


def _measure(variants: dict[str, Variant], repeats: int) -> dict[str, dict]:
    """Every figure of every variant: the first step (which compiles, when compiled), then,
    after a warm-up, ``repeats`` turns in each of which every variant times each figure once
    (T, each S_k, together, one after another), so that a change in the machine's load falls
    on all figures and variants alike; the medians over the turns."""
    results: dict[str, dict] = {}
    for name, v in variants.items():
        _sync()
        t0 = time.perf_counter()
        v.together()
        _sync()
        results[name] = {"first": time.perf_counter() - t0}
    for v in variants.values():  # warm-up: allocator, kernels, optimizer state, every graph
        for _ in range(2):
            v.together()
            v.one_after_another()
            for k in range(len(v.trainees)):
                v.student_step(k)()

    def figures(v: Variant) -> dict[str, object]:
        return {
            "teacher": v.teacher_forward,
            **{f"S:{t.name}": v.student_step(k) for k, t in enumerate(v.trainees)},
            "together": v.together,
            "sequence": v.one_after_another,
        }

    times: dict[str, dict[str, list[float]]] = {
        name: {key: [] for key in figures(v)} for name, v in variants.items()
    }
    for _ in range(repeats):
        for name, v in variants.items():
            for key, fn in figures(v).items():
                times[name][key].append(_median_time(fn, 1))
    for name, per_figure in times.items():
        medians = {key: statistics.median(values) for key, values in per_figure.items()}
        results[name]["students"] = {
            key[2:]: value for key, value in medians.items() if key.startswith("S:")
        }
        for key in ("teacher", "together", "sequence"):
            results[name][key] = medians[key]
    return results


def _report(results: dict[str, dict], args: argparse.Namespace) -> None:
    names = list(results)
    first = results[names[0]]
    k = len(first["students"])
    h, w = args.size
    print(
        f"multi-student step: teacher {args.teacher}, {k} students, batch {args.batch} at "
        f"{h}x{w}, precision {args.mixed_precision}, on "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'} "
        f"({torch.get_num_threads()} CPU thread(s)), median of {args.repeats}; ms. cached: "
        f"z_T read from a {args.views}-view teacher cache (T is then the lookup)"
    )
    print(f"  {'':<38}" + "".join(f"{n:>16}" for n in names))

    def row(label: str, values: list[float]) -> None:
        print(f"  {label:<38}" + "".join(f"{v * 1000:16.1f}" for v in values))

    row("first step (compiling, when compiled)", [results[n]["first"] for n in names])
    row("teacher forward T", [results[n]["teacher"] for n in names])
    for student in first["students"]:
        row(f"student step S ({student})", [results[n]["students"][student] for n in names])
    row("K students together", [results[n]["together"] for n in names])
    row("K students one after another", [results[n]["sequence"] for n in names])
    for n in names:
        r = results[n]
        s_sum = sum(r["students"].values())
        if n.startswith("cached"):
            live = results[n.removeprefix("cached ")]
            print(
                f"  {n}: together / sum S = {r['together'] / s_sum:.2f} (ideal 1.00: no "
                f"teacher); {live['together'] / r['together']:.2f}x faster than live {n[7:]}"
            )
            continue
        ideal = (k * r["teacher"] + s_sum) / (r["teacher"] + s_sum)
        measured = r["sequence"] / r["together"]
        print(
            f"  {n}: together / (T + sum S) = {r['together'] / (r['teacher'] + s_sum):.2f}; "
            f"speed-up over one after another {measured:.2f}x, ideal (K T + sum S) / "
            f"(T + sum S) = {ideal:.2f}x, ratio {measured / ideal:.2f} (target >= 0.90)"
        )
    if "compiled" in results:
        for student in first["students"]:
            ratio = results["eager"]["students"][student] / results["compiled"]["students"][student]
            print(f"  compiled / eager, {student}: {ratio:.2f}x faster")


if __name__ == "__main__":
    sys.exit(main())

"""Chaos soak: a 2-rank distillation under ``torchrun --max-restarts N`` whose ranks are
SIGKILLed N times, against the same run left alone.

Builds a small run here (synthetic placenta and natural shards, a tiny teacher trained for 2
steps, two tiny students distilled for --steps steps at 32x32 with a checkpoint every
--every-steps steps), then runs the distillation twice, one after the other, with the same
command line: ``torchrun --standalone --nproc-per-node 2 --max-restarts N -m vlcd_dist distill
... --resume``, one thread per rank:

* uninterrupted: no fault;
* chaos: a driver SIGKILLs one rank, chosen at random, N times. The kill plan (--seed) picks
  the steps: some kills land right after a checkpoint is complete (nothing to redo), the others
  between two checkpoints (the steps since the last one are redone). The driver reads the
  current step from rank 0's progress lines (``distill: 13/40 step``) and the checkpoints
  folder, finds the ranks among the torchrun agent's children in /proc (``RANK`` and
  ``TORCHELASTIC_RESTART_COUNT`` in their environment), kills one, and waits until torchrun
  has restarted the group and it has resumed (``resumed from ... (step S)``) before the next.

Prints the kills survived, the steps redone, the wall-time overhead against the uninterrupted
run, and whether the final weights (exports, the last checkpoint's models, optimizer states,
RNG and data position) and the TensorBoard scalars (every tag but ``perf/``, every step) are
bit-identical to the uninterrupted run. Exits 1 when they are not or a kill was not survived.
Linux only (/proc).

    python bench/chaos.py                         # 5 kills, seed 0, 40 steps: a few minutes
    python bench/chaos.py --kills 8 --seed 3 --steps 60 --keep --out runs/chaos
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import vlcd_dist  # noqa: E402
from vlcd_dist.cli import main as vlcd  # noqa: E402
from vlcd_dist.pipelines.launch import multi_rank_command  # noqa: E402

RANKS = 2
STUDENTS = ("tiny_mobilenetv3", "tiny_resnet")
RECIPE = """\
run: {{seed: 0, collective_timeout_s: 60}}
data:
  placenta: {placenta}
  natural: {natural}
  image_size: [32, 32]
  batch_size: 4
  num_workers: 1
  shuffle_buffer: 8
teacher: {{preset: tiny_resnet18_minilm, autocast_dtype: float32}}
students: [{students}]
optim: {{lr: 1.0e-3, warmup_steps: 2}}
train_teacher: {{steps: 2, lock_text: true}}
distill: {{steps: {steps}, init_from: null}}
checkpoint: {{every_steps: {every}, keep_last: 2}}
logging: {{every_steps: 1, progress: true, progress_every_s: 0}}
"""
"""The run's recipe (format with placenta=, natural=, students=, steps=, every=)."""

PROGRESS = re.compile(r"distill: (\d+)/(\d+) step")
RESUMED = re.compile(r"distill: resumed from \S+ \(step (\d+)\)")
FRESH = "no complete checkpoint"


# --- the kill plan and the log (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """SIGKILL ``rank`` once step ``step`` is done; ``after_checkpoint``: ``step`` is a
    checkpoint step and the kill waits until that checkpoint is complete."""

    rank: int
    step: int
    after_checkpoint: bool


def kill_plan(seed: int, kills: int, steps: int, every: int, ranks: int = RANKS) -> list[Kill]:
    """``kills`` kills at distinct, increasing steps in [2, steps - every], about a third of
    them right after a checkpoint and the rest between two checkpoints, each of a random rank.
    The last ``every`` steps are left alone, so that the run does not end before a kill that
    lands a little late."""
    last = steps - every
    on = [s for s in range(every, last + 1, every)]
    between = [s for s in range(2, last + 1) if s % every]
    if kills > len(on) + len(between):
        raise SystemExit(
            f"--kills {kills} do not fit in {steps} steps (at most {len(on) + len(between)} "
            f"with a checkpoint every {every}): give more --steps"
        )
    rng = random.Random(seed)
    n_on = min(len(on), sum(rng.random() < 1 / 3 for _ in range(kills)))
    n_on = max(n_on, kills - len(between))
    chosen = [(s, True) for s in rng.sample(on, n_on)]
    chosen += [(s, False) for s in rng.sample(between, kills - n_on)]
    return [Kill(rng.randrange(ranks), s, a) for s, a in sorted(chosen)]


@dataclass
class Attempt:
    """One start of the group, as rank 0's log tells it."""

    resumed_from: int  # 0: started fresh
    last_step: int = 0  # the last step rank 0 reported done (its progress line)

    def __post_init__(self) -> None:
        self.last_step = max(self.last_step, self.resumed_from)


@dataclass
class Log:
    """The attempts found in a torchrun log so far."""

    attempts: list[Attempt] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Log:
        log = cls()
        for line in text.splitlines():
            if FRESH in line and "distill:" in line:
                log.attempts.append(Attempt(0))
            elif m := RESUMED.search(line):
                log.attempts.append(Attempt(int(m[1])))
            elif (m := PROGRESS.search(line)) and log.attempts:
                log.attempts[-1].last_step = max(log.attempts[-1].last_step, int(m[1]))
        return log

    @property
    def step(self) -> int:
        """The newest attempt's last step done (0 before any)."""
        return self.attempts[-1].last_step if self.attempts else 0

    def redone(self) -> list[int]:
        """Per restart: the steps done before the kill that the next attempt trained again."""
        pairs = zip(self.attempts, self.attempts[1:], strict=False)
        return [a.last_step - b.resumed_from for a, b in pairs]


# --- processes ---------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def rank_pids(agent: int) -> dict[tuple[int, int], int]:
    """(restart count, rank) -> pid of the ranks torchrun's agent process ``agent`` runs."""
    ranks = {}
    for pid in _children(agent):
        env = _environ(pid)
        if "RANK" in env and "TORCHELASTIC_RESTART_COUNT" in env:
            ranks[(int(env["TORCHELASTIC_RESTART_COUNT"]), int(env["RANK"]))] = pid
    return ranks


def _stop(proc: subprocess.Popen) -> None:
    """Kill the agent and everything below it (an abandoned soak leaves nothing running)."""
    pids, frontier = [proc.pid], [proc.pid]
    while frontier:
        frontier = [c for p in frontier for c in _children(p)]
        pids += frontier
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# --- one run -----------------------------------------------------------------------------------


@dataclass
class Result:
    wall_s: float
    log: Log
    killed: list[tuple[Kill, int]]  # each kill done and the step rank 0 had reached


def _complete(out: Path, step: int) -> bool:
    return (out / "checkpoints" / f"step_{step:06d}" / "COMPLETE").is_file()


def run(
    cmd: list[str], env: dict[str, str], out: Path, log_file: Path, plan: list[Kill], timeout: float
) -> Result:
    """Run ``cmd`` (the torchrun line) to the end, carrying out the kills of ``plan``."""
    killed: list[tuple[Kill, int]] = []
    t0 = time.perf_counter()
    with open(log_file, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        pending = list(plan)
        while proc.poll() is None:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(
                    f"chaos: the run in {out} still going after {timeout:.0f} s (--timeout); "
                    f"the end of {log_file}:\n{log_file.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.05)
            if not pending:
                continue
            log = Log.parse(log_file.read_text(errors="replace"))
            attempt = len(killed)  # the group's restart count this kill is meant for
            if len(log.attempts) != attempt + 1:
                continue  # the restarted group has not resumed yet
            kill = pending[0]
            due = log.step >= kill.step
            if kill.after_checkpoint:
                # (Or 2 steps later, should the checkpoint's marker have been missed.)
                due = due and (_complete(out, kill.step) or log.step >= kill.step + 2)
            if not due:
                continue
            pid = rank_pids(proc.pid).get((attempt, kill.rank))
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it just ended (the group is going down): look again
            killed.append((kill, log.step))
            pending.pop(0)
        wall = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            _stop(proc)
    text = log_file.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(
            f"chaos: the run in {out} failed with exit status {proc.returncode} after "
            f"{len(killed)} kill(s); the end of {log_file}:\n{text[-4000:]}"
        )
    return Result(wall, Log.parse(text), killed)


# --- comparing two runs ------------------------------------------------------------------------


def _tensor_files(out: Path, steps: int) -> list[Path]:
    """The files that must be identical, relative to the run folder: exports, and the final
    checkpoint's weights, optimizer and scheduler states and every rank's RNG."""
    final = out / "checkpoints" / f"step_{steps:06d}"
    files = sorted((out / "export").glob("*.safetensors"))
    files += sorted(final.rglob("*.safetensors")) + sorted(final.glob("*/*.json"))
    return [p.relative_to(out) for p in files]


def _same_safetensors(a: Path, b: Path) -> bool:
    """The same tensors (names, dtypes, shapes, bits) and metadata. Not the bytes: safetensors
    writes the metadata in a different order in every process."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        for key in fa.keys():
            ta, tb = fa.get_tensor(key), fb.get_tensor(key)
            if ta.dtype != tb.dtype or ta.shape != tb.shape:
                return False
            bits = [t.contiguous().reshape(-1).view(torch.uint8) for t in (ta, tb)]
            if not torch.equal(*bits):
                return False
    return True


def compare_weights(a: Path, b: Path, steps: int) -> list[str]:
    """What differs between runs ``a`` and ``b`` (empty: bit-identical): every tensor of the
    safetensors files bit for bit (NaNs included), with their metadata; the JSON files byte for
    byte; of meta.json the training state (step, epoch, data position, counters)."""
    files_a, files_b = _tensor_files(a, steps), _tensor_files(b, steps)
    diffs = [f"only in one run: {p}" for p in sorted(set(files_a) ^ set(files_b))]
    if not files_a:
        diffs.append(f"no exports or final checkpoint in {a}")
    for rel in sorted(set(files_a) & set(files_b)):
        if rel.suffix == ".safetensors":
            same = _same_safetensors(a / rel, b / rel)
        else:
            same = (a / rel).read_bytes() == (b / rel).read_bytes()
        if not same:
            diffs.append(f"differs: {rel}")
    meta = Path("checkpoints") / f"step_{steps:06d}" / "meta.json"
    states = [json.loads((x / meta).read_text())["state"] for x in (a, b)]
    if states[0] != states[1]:
        diffs.append(f"differs: the training state in {meta}")
    return diffs


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``, as TensorBoard shows them
    (the events of steps redone after a resume are hidden by the resumed run's marker)."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Its note on reading the resumed run's marker ("Detected out of order event.step") is
    # what is expected here.
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def compare_scalars(a: Path, b: Path, steps: int) -> tuple[list[str], int]:
    """What differs between the TensorBoard scalars of runs ``a`` and ``b`` (timings under
    ``perf/`` left out), and how many values were compared."""
    sa, sb = scalars(a / "tb"), scalars(b / "tb")
    tags = sorted(t for t in sa if not t.startswith("perf/"))
    other = {t for t in sb if not t.startswith("perf/")}
    diffs = [f"tag in one run only: {t}" for t in sorted(set(tags) ^ other)]
    if not tags:
        diffs.append(f"no scalars in {a / 'tb'}")
    for tag in tags:
        if [s for s, _ in sa[tag]] != list(range(1, steps + 1)):
            diffs.append(f"{tag}: steps {[s for s, _ in sa[tag]]} in {a}")
        if sb.get(tag) != sa[tag]:
            diffs.append(f"{tag}: differs")
    return diffs, sum(len(sa[t]) for t in tags)


# --- the soak ----------------------------------------------------------------------------------


def prepare(root: Path, steps: int, every: int) -> tuple[Path, str]:
    """Shards, recipe and teacher under ``root``; the recipe file and the teacher's weights."""
    placenta, natural = root / "shards" / "placenta", root / "shards" / "natural"
    common = ["--shard-size", "6", "--workers", "2", "--quiet"]
    vlcd(["shards", "placenta", "--synthetic", "48", "--image-size", "128x96", "--out",
          str(placenta), *common])  # fmt: skip
    vlcd(["shards", "natural", "--source", "synthetic", "--count", "64", "--image-size", "48",
          "--out", str(natural), *common])  # fmt: skip
    recipe = root / "chaos.yaml"
    recipe.write_text(
        RECIPE.format(
            placenta=placenta,
            natural=natural,
            students=", ".join(STUDENTS),
            steps=steps,
            every=every,
        )
    )
    teacher = root / "teacher"
    if vlcd(["train-teacher", "--config", str(recipe), "--out", str(teacher)]) != 0:
        raise SystemExit("chaos: train-teacher failed")
    return recipe, str(teacher / "export" / "teacher.safetensors")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs (torchrun --max-restarts)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    ap.add_argument("--steps", type=int, default=40, help="distillation steps")
    ap.add_argument("--every-steps", type=int, default=4, help="checkpoint.every_steps")
    ap.add_argument("--out", type=Path, help="folder for the runs (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the runs' folders")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds one run may take")
    args = ap.parse_args()
    if args.kills < 1 or args.every_steps < 1 or args.steps <= args.every_steps:
        ap.error("need --kills >= 1 and --steps > --every-steps >= 1")
    plan = kill_plan(args.seed, args.kills, args.steps, args.every_steps)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="chaos-", dir=args.out))
    try:
        return soak(args, plan, root)
    finally:
        if args.keep:
            print(f"runs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def soak(args: argparse.Namespace, plan: list[Kill], root: Path) -> int:
    recipe, teacher = prepare(root, args.steps, args.every_steps)
    # The ranks import the vlcd_dist this driver imports; one thread each (the 2 ranks share the
    # cores, and the two runs must do the same arithmetic).
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(vlcd_dist.__file__).parents[1]), env.get("PYTHONPATH")) if p
    )
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}  # never requeue a job

    def command(out: Path) -> list[str]:
        program = ["-m", "vlcd_dist", "distill", "--config", str(recipe), "--out", str(out),
                   "--set", f"teacher.checkpoint={teacher}", "--resume"]  # fmt: skip
        return multi_rank_command(RANKS, program, launcher="torchrun", max_restarts=args.kills)

    ref_out, chaos_out = root / "uninterrupted", root / "chaos"
    plan_text = ", ".join(
        f"rank {k.rank} after step {k.step}{' (checkpoint)' if k.after_checkpoint else ''}"
        for k in plan
    )
    print(f"chaos soak: seed {args.seed}, {args.kills} kills planned: {plan_text}", flush=True)
    ref = run(command(ref_out), env, ref_out, root / "uninterrupted.log", [], args.timeout)
    print(f"  uninterrupted run done in {ref.wall_s:.1f} s", flush=True)
    chaos = run(command(chaos_out), env, chaos_out, root / "chaos.log", plan, args.timeout)

    weight_diffs = compare_weights(ref_out, chaos_out, args.steps)
    scalar_diffs, n_scalars = compare_scalars(ref_out, chaos_out, args.steps)
    redone = chaos.log.redone()
    restarts = len(chaos.log.attempts) - 1
    survived = len(chaos.killed) == args.kills and restarts == args.kills
    overhead = chaos.wall_s - ref.wall_s
    print(
        f"chaos soak: 2 gloo ranks, {args.steps} steps, checkpoint every {args.every_steps}, "
        f"torchrun --max-restarts {args.kills}, seed {args.seed}, vlcd_dist from "
        f"{Path(vlcd_dist.__file__).parent}"
    )
    for i, ((kill, at), nxt) in enumerate(
        zip(chaos.killed, chaos.log.attempts[1:], strict=False), 1
    ):
        where = "after checkpoint" if kill.after_checkpoint else "between checkpoints"
        print(
            f"  kill {i}: rank {kill.rank} SIGKILLed at step {at} ({where}, planned "
            f"{kill.step}); resumed from step {nxt.resumed_from}, "
            f"{chaos.log.attempts[i - 1].last_step - nxt.resumed_from} step(s) redone"
        )
    print(f"  kills survived           {min(len(chaos.killed), restarts)}/{args.kills}")
    print(f"  steps redone             {sum(redone)} (trained {args.steps + sum(redone)} steps)")
    print(
        f"  wall time                {chaos.wall_s:.1f} s vs {ref.wall_s:.1f} s uninterrupted: "
        f"+{overhead:.1f} s (+{100 * overhead / ref.wall_s:.0f}%, "
        f"{overhead / max(1, len(chaos.killed)):.1f} s per kill)"
    )
    n_files = len(_tensor_files(ref_out, args.steps))
    print(
        f"  final weights            "
        f"{'bit-identical' if not weight_diffs else 'DIFFERENT'} ({n_files} files: exports, "
        f"last checkpoint's models, optimizers, schedulers, RNG; training state)"
    )
    print(
        f"  TensorBoard scalars      {'bit-identical' if not scalar_diffs else 'DIFFERENT'} "
        f"({n_scalars} values, perf/ left out)"
    )
    for diff in (weight_diffs + scalar_diffs)[:20]:
        print(f"    {diff}")
    ok = survived and not weight_diffs and not scalar_diffs
    if not survived:
        print(f"  NOT SURVIVED: {len(chaos.killed)} kills done, {restarts} restarts seen")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

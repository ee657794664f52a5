"""Size and speed of image encoders side by side: parameters, MACs, batch-1 latency and
throughput per precision and device, and the speed-up over the teacher's image tower, timed
round-robin so that load on a shared machine hits every model alike. ``vlcd bench models``
(:mod:`vlcd_dist.cli.bench`, whose help says what is measured) drives it; the eval stage uses
:func:`latency_by_precision`.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcd_dist.errors import VlcdError
from vlcd_dist.io import write_json, write_text

# Names on the command line -> autocast dtype (None: plain fp32, autocast off).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
FORMAT = "vlcd-bench-models/1"


@dataclass
class BenchModel:
    """One model under test."""

    name: str
    """Label in the table ("teacher:resnet50_bert" or the student's name)."""
    role: str
    """"teacher" or "student"."""
    module: nn.Module
    """images [B, 3, H, W] -> features [B, d]."""
    arch: str
    """timm architecture of the backbone."""


# ---------------------------------------------------------------------------------------------
# Building the models
# ---------------------------------------------------------------------------------------------


def build_models(
    teacher: str,
    students: Sequence[str],
    embed_dim: int | None,
    image_size: tuple[int, int],
) -> list[BenchModel]:
    """The teacher's image tower first, then the students, all in eval mode with random weights.

    teacher: a registered teacher name (its image_model and embed_dim are used).
    students: registered student names or timm model names.
    embed_dim: d of every projection; None takes the teacher's.
    image_size: (H, W) every model is built for, as training builds them at data.image_size, so
    what is timed is what runs (EfficientFormer re-lays its attention grid instead of resizing
    the input to 224x224 inside the model).
    """
    from vlcd_dist.models import ImageTower, create_student, teacher_config

    cfg = teacher_config(teacher)
    d = cfg.embed_dim if embed_dim is None else embed_dim
    # "none": random init without the warning, since weights do not change speed or MACs.
    tower = ImageTower(cfg.image_model, d, weights="none", image_size=image_size)
    models = [BenchModel(f"teacher:{teacher}", "teacher", tower.eval(), cfg.image_model)]
    for name in students:
        student = create_student(name, embed_dim=d, image_size=image_size)
        arch = getattr(student.backbone, "pretrained_cfg", {}).get("architecture", name)
        models.append(BenchModel(name, "student", student.eval(), str(arch)))
    return models


def count_params(module: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, image_size: tuple[int, int]) -> int:
    """FLOPs of one forward on one image [1, 3, H, W], fp32 on CPU.

    torch's FlopCounterMode counts matrix work (convolutions, matmuls, attention); element-wise
    ops, pooling and resizing are not counted, as in the usual MAC tables (timm, fvcore).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(module.parameters()).device
    x = torch.zeros(1, 3, *image_size, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    # CUDA calls return before the kernels finish; time only finished work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_fn(
    module: Callable[[torch.Tensor], torch.Tensor], device: torch.device, dtype: torch.dtype | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A call images -> features under inference mode and, for bf16/fp16, autocast."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            return module(x)

    return forward


def time_call(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    """Wall-clock seconds of one ``fn(x)``, the device synchronised before and after."""
    _sync(x.device)
    start = time.perf_counter()
    fn(x)
    _sync(x.device)
    return time.perf_counter() - start


def round_robin(n_models: int, repeats: int) -> list[list[int]]:
    """Model order for each repeat: all models every round, a different one first each time.

    Rotating the start keeps any model from always running right after the same neighbour
    (caches, clock boost), and interleaving spreads a noisy spell over all models.
    """
    return [[(r + i) % n_models for i in range(n_models)] for r in range(repeats)]


def time_models(
    models: Sequence[BenchModel],
    device: torch.device,
    dtype: torch.dtype | None,
    image_size: tuple[int, int],
    batch_size: int,
    repeats: int,
    warmup: int,
    progress: Callable[[str], None],
) -> list[dict[str, list[float]]]:
    """Raw seconds per repeat for each model: {"latency_s": batch 1, "batch_s": batch B}.

    Inputs are fixed random images (standard-normal, like normalised pixels), the same for
    every model.
    """
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 3, *image_size, generator=gen).to(device)
    xb = torch.randn(batch_size, 3, *image_size, generator=gen).to(device)
    calls = [_forward_fn(m.module, device, dtype) for m in models]
    for m, fn in zip(models, calls, strict=True):
        progress(f"warm-up {m.name}")
        for _ in range(warmup):
            fn(x1)
            fn(xb)
    raw: list[dict[str, list[float]]] = [{"latency_s": [], "batch_s": []} for _ in models]
    # The garbage collector would add pauses to whichever model is unlucky (timeit does this too).
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r, order in enumerate(round_robin(len(models), repeats)):
            progress(f"repeat {r + 1}/{repeats}")
            for i in order:
                raw[i]["latency_s"].append(time_call(calls[i], x1))
                raw[i]["batch_s"].append(time_call(calls[i], xb))
    finally:
        if gc_was_enabled:
            gc.enable()
    return raw


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_devices() -> list[str]:
    """CPU always, and the GPU when torch sees one."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def machine_info(threads: int, devices: Sequence[str]) -> dict[str, Any]:
    """What the numbers were measured on."""
    import timm

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores_available": available_cores(),
        "threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "devices": list(devices),
    }
    if "cuda" in devices:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (runnable processes), where the OS reports them."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarise(
    models: Sequence[BenchModel],
    raw: Sequence[dict[str, list[float]]],
    sizes: Sequence[dict[str, int]],
    device: str,
    precision: str,
    batch_size: int,
) -> list[dict[str, Any]]:
    """One result row per model: medians, throughput and speed-ups over the teacher (row 0).

    speedup_throughput = teacher's median batch time / model's (equal batch, so the ratio of
    throughputs); speedup_latency = teacher's median batch-1 time / model's.
    """
    teacher_batch = _median(raw[0]["batch_s"])
    teacher_latency = _median(raw[0]["latency_s"])
    rows = []
    for m, r, size in zip(models, raw, sizes, strict=True):
        batch_s = _median(r["batch_s"])
        latency_s = _median(r["latency_s"])
        rows.append(
            {
                "model": m.name,
                "role": m.role,
                "arch": m.arch,
                "device": device,
                "precision": precision,
                "params": size["params"],
                "macs": size["macs"],
                "flops": size["flops"],
                "batch_size": batch_size,
                "latency_ms": latency_s * 1e3,
                "batch_ms": batch_s * 1e3,
                "throughput_ips": batch_size / batch_s,
                "speedup_latency": teacher_latency / latency_s,
                "speedup_throughput": teacher_batch / batch_s,
                "raw": {k: list(v) for k, v in r.items()},
            }
        )
    return rows


def check_settings(precisions: Sequence[str], devices: Sequence[str] | None) -> list[str]:
    """Refuse unknown precisions and devices; return the devices to use (default: all)."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise VlcdError(f"--dtypes {unknown}: use a comma-separated subset of {list(PRECISIONS)}")
    devices = list(devices or default_devices())
    if set(devices) - {"cpu", "cuda"}:
        raise VlcdError(f"--devices {devices}: use cpu, cuda or cpu,cuda")
    if "cuda" in devices and not torch.cuda.is_available():
        raise VlcdError("--devices cuda: torch sees no GPU here; use --devices cpu")
    return devices


def run_benchmark(
    models: Sequence[BenchModel],
    *,
    image_size: tuple[int, int],
    batch_size: int = 32,
    repeats: int = 5,
    warmup: int = 2,
    precisions: Sequence[str] = ("fp32", "bf16"),
    devices: Sequence[str] | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``models`` (the teacher first) and return the JSON-ready report.

    image_size: (H, W) of the input, in pixels. batch_size: images per throughput call.
    repeats: timed calls per model and setting (median reported). warmup: untimed calls first.
    threads: intra-op CPU threads (default: every available core); restored afterwards.
    """
    if not models or models[0].role != "teacher":
        raise VlcdError("run_benchmark needs the teacher as the first model")
    devices = check_settings(precisions, devices)
    say = progress or (lambda _msg: None)
    threads = threads or available_cores()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    # Other work on the machine slows every model; the load averages say how much there was.
    load_at_start = _load_average()
    try:
        sizes = []
        for m in models:
            say(f"counting MACs of {m.name}")
            m.module.to("cpu")
            flops = count_flops(m.module, image_size)
            sizes.append({"params": count_params(m.module), "flops": flops, "macs": flops // 2})
        results: list[dict[str, Any]] = []
        for device_name in devices:
            device = torch.device(device_name)
            if device.type == "cuda":
                # Let cuDNN pick its fastest kernels for the fixed shapes, as deployment would.
                torch.backends.cudnn.benchmark = True
            for m in models:
                m.module.to(device)
            for precision in precisions:
                raw = time_models(
                    models,
                    device,
                    PRECISIONS[precision],
                    image_size,
                    batch_size,
                    repeats,
                    warmup,
                    lambda msg, d=device_name, p=precision: say(f"{d} {p}: {msg}"),
                )
                results += summarise(models, raw, sizes, device_name, precision, batch_size)
            for m in models:
                m.module.to("cpu")
        report = {
            "format": FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(threads, devices),
            "settings": {
                "image_size": list(image_size),
                "batch_size": batch_size,
                "repeats": repeats,
                "warmup": warmup,
                "precisions": list(precisions),
                "devices": devices,
                "statistic": "median over repeats",
                "order": "round-robin over models, rotated each repeat",
                "weights": "random init (speed and MACs do not depend on weight values)",
                "macs": "torch.utils.flop_counter.FlopCounterMode FLOPs / 2, one image",
            },
            "models": [
                {"name": m.name, "role": m.role, "arch": m.arch, **size}
                for m, size in zip(models, sizes, strict=True)
            ],
            "results": results,
        }
        report["machine"]["load_average_at_start"] = load_at_start
        report["machine"]["load_average_at_end"] = _load_average()
        return report
    finally:
        torch.set_num_threads(previous_threads)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table, one row per model, device and precision."""
    s = report["settings"]
    m = report["machine"]
    h, w = s["image_size"]
    b = s["batch_size"]
    lines = [
        f"Models at {h}x{w} px; latency at batch 1, throughput at batch {b}; median of "
        f"{s['repeats']} repeats. CPU: {m['cpu_model']}, {m['threads']} threads; "
        f"torch {m['torch']}" + (f"; GPU: {m['gpu']}" if "gpu" in m else "") + ".",
        f"Load average (1/5/15 min) at start {_fmt_load(m.get('load_average_at_start'))}, "
        f"at end {_fmt_load(m.get('load_average_at_end'))}; other work slows every model.",
        "",
        "| model | device | precision | params (M) | GMACs | latency b1 (ms) "
        f"| speed-up b1 | throughput b{b} (img/s) | speed-up b{b} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['model']} | {r['device']} | {r['precision']} | {r['params'] / 1e6:.2f} "
            f"| {r['macs'] / 1e9:.3f} | {r['latency_ms']:.2f} | {r['speedup_latency']:.2f}x "
            f"| {r['throughput_ips']:.1f} | {r['speedup_throughput']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _fmt_load(load: Sequence[float] | None) -> str:
    return "n/a" if load is None else "/".join(f"{v:.1f}" for v in load)


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``bench_models.json`` and ``bench_models.md`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "bench_models.json"
    md_path = out / "bench_models.md"
    write_json(json_path, report, indent=2)
    write_text(md_path, markdown_table(report))
    return json_path, md_path


def latency_by_precision(
    models: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    shape: tuple[int, ...],
    precisions: Sequence[str],
    iters: int,
    threads: int,
    memory_format: torch.memory_format = torch.contiguous_format,
    warmup: int = 3,
) -> dict[str, dict[str, float]]:
    """Median CPU wall time (ms) of every model in every precision: {precision: {model: ms}}.

    models: {name: images -> features}, plain forwards on CPU that apply no precision of their
    own. Each precision ("fp32", or "bf16"/"fp16" as autocast over the whole forward) is applied
    to every model alike, on the same random batch of ``shape``: ``warmup`` untimed calls per
    model, then ``iters`` timed rounds over the models (:func:`round_robin`), with ``threads``
    CPU threads. A speed-up is only meaningful between two models of the same precision.
    """
    cpu = torch.device("cpu")
    names = list(models)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        x = x.contiguous(memory_format=memory_format)
        out: dict[str, dict[str, float]] = {}
        for precision in precisions:
            calls = [_forward_fn(models[n], cpu, PRECISIONS[precision]) for n in names]
            for call in calls:
                for _ in range(warmup):
                    call(x)
            times: list[list[float]] = [[] for _ in names]
            for order in round_robin(len(names), iters):
                for i in order:
                    times[i].append(time_call(calls[i], x))
            out[precision] = {n: _median(t) * 1e3 for n, t in zip(names, times, strict=True)}
        return out
    finally:
        torch.set_num_threads(before)

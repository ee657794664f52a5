"""``vlcd bench models``: every field for every model and precision, speed-ups from raw times."""
# ruff: noqa: E402 - the hub must be switched off before timm is imported.

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import json
import statistics
from pathlib import Path

import pytest

from vlcd_dist.cli.bench import add_parser as add_bench_parser
from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.efficiency import round_robin

TEACHER = "tiny_resnet18_minilm"  # random ResNet-18 image tower, d=64
STUDENTS = ["tiny_mobilenetv3", "tiny_resnet"]
RESULT_FIELDS = {
    "model", "role", "arch", "device", "precision", "params", "macs", "flops", "batch_size",
    "latency_ms", "batch_ms", "throughput_ips", "speedup_latency", "speedup_throughput", "raw",
}  # fmt: skip


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vlcd")
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    args = _parse(
        f"bench models --teacher {TEACHER} --models {','.join(STUDENTS)} --image-size 32 "
        f"--batch-size 4 --repeats 2 --warmup 1 --threads 1 --devices cpu --dtypes fp32,bf16 "
        f"--out {out} --quiet".split()
    )
    assert args.func(args) == 0
    return json.loads((out / "bench_models.json").read_text()), out


def test_every_field_for_every_model_and_precision(report: tuple[dict, Path]) -> None:
    data, _ = report
    names = [f"teacher:{TEACHER}", *STUDENTS]
    assert [m["name"] for m in data["models"]] == names
    rows = {(r["model"], r["precision"]): r for r in data["results"]}
    assert set(rows) == {(n, p) for n in names for p in ("fp32", "bf16")}
    for row in rows.values():
        assert RESULT_FIELDS <= set(row), RESULT_FIELDS - set(row)
        assert row["device"] == "cpu" and row["batch_size"] == 4
        assert len(row["raw"]["latency_s"]) == len(row["raw"]["batch_s"]) == 2
        assert row["throughput_ips"] == pytest.approx(4 / (row["batch_ms"] / 1e3))
    machine = data["machine"]
    for key in ("cpu_model", "threads", "torch", "devices"):
        assert machine[key]
    assert machine["threads"] == 1 and machine["devices"] == ["cpu"]
    assert data["settings"]["image_size"] == [32, 32]


def test_speedups_are_ratios_of_the_stored_times(report: tuple[dict, Path]) -> None:
    data, _ = report
    for precision in ("fp32", "bf16"):
        rows = [r for r in data["results"] if r["precision"] == precision]
        teacher = next(r for r in rows if r["role"] == "teacher")
        t_batch = statistics.median(teacher["raw"]["batch_s"])
        t_lat = statistics.median(teacher["raw"]["latency_s"])
        assert teacher["speedup_throughput"] == pytest.approx(1.0)
        for row in rows:
            batch = statistics.median(row["raw"]["batch_s"])
            lat = statistics.median(row["raw"]["latency_s"])
            assert row["batch_ms"] == pytest.approx(batch * 1e3)
            assert row["latency_ms"] == pytest.approx(lat * 1e3)
            assert row["speedup_throughput"] == pytest.approx(t_batch / batch)
            assert row["speedup_throughput"] == pytest.approx(
                row["throughput_ips"] / teacher["throughput_ips"]
            )
            assert row["speedup_latency"] == pytest.approx(t_lat / lat)


def test_macs_are_counted_and_grow_with_the_model(report: tuple[dict, Path]) -> None:
    data, _ = report
    by_name = {m["name"]: m for m in data["models"]}
    for m in by_name.values():
        assert m["macs"] > 0 and m["flops"] == 2 * m["macs"] and m["params"] > 0
    # ResNet-18 (teacher) >> ResNet-10-T > MobileNetV3-Small-0.5, in MACs and parameters.
    teacher, resnet, mobile = (by_name[n] for n in (f"teacher:{TEACHER}", *reversed(STUDENTS)))
    assert teacher["macs"] > resnet["macs"] > mobile["macs"]
    assert teacher["params"] > mobile["params"]
    # ResNet-18 at 32 px: ~1.82 GMACs at 224 px scaled by (32/224)^2, plus the 512->64 projection.
    assert 3.0e7 < teacher["macs"] < 4.5e7


def test_markdown_lists_every_model(report: tuple[dict, Path]) -> None:
    _, out = report
    table = (out / "bench_models.md").read_text()
    for name in (f"teacher:{TEACHER}", *STUDENTS):
        rows = [line for line in table.splitlines() if line.startswith(f"| {name} |")]
        assert len(rows) == 2, name  # fp32 and bf16
    assert "speed-up b4" in table and "GMACs" in table


def test_round_robin_rotates_the_first_model() -> None:
    orders = round_robin(3, 4)
    assert orders == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_bad_names_and_precisions_are_explained() -> None:
    args = _parse(
        "bench models --teacher tiny_resnet18_minilm --models tiny_mobilenet --quiet".split()
    )
    with pytest.raises(VlcdError, match=r"unknown student 'tiny_mobilenet'.*--models"):
        args.func(args)
    args = _parse(
        f"bench models --teacher {TEACHER} --models tiny_mobilenetv3 --dtypes fp8 --quiet".split()
    )
    with pytest.raises(VlcdError, match=r"--dtypes \['fp8'\]: use .*fp32"):
        args.func(args)
    args = _parse(f"bench models --teacher {TEACHER} --devices gpu --quiet".split())
    with pytest.raises(VlcdError, match=r"--devices \['gpu'\]: use cpu, cuda"):
        args.func(args)

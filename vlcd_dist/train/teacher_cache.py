"""``vlcd cache-teacher``: run the frozen teacher once over a stage's shard set and store its
image embedding of every seeded view of every sample; and the checks a run with
``teacher.cache`` makes before it reads one (the format: :mod:`vlcd_dist.data.teacher_cache`).

A view is the training augmentation drawn with the torch RNG seeded from (run.seed, sample key,
view index) (:mod:`vlcd_dist.data.views`); a run reading the cache picks one of the A views of
each sample per epoch, regenerates its pixels for the students and reads the teacher's
embedding of them, so it trains on what a live-teacher run with ``data.views: A`` trains on.

The cache is written by one process (rank 0's work; nothing is gathered). Every rank of a run
reads the whole cache into memory: A x d numbers per sample (fp16 on disk by default).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from vlcd_dist.config import ConfigError, TrainConfig
from vlcd_dist.data.stream import StreamConfig, resolve_shards
from vlcd_dist.data.teacher_cache import (
    DTYPES,
    TeacherCache,
    digest,
    iter_views,
    shard_file,
    shard_fingerprint,
    view_recipe,
    write_manifest,
    write_shard,
)
from vlcd_dist.models import FrozenTeacher
from vlcd_dist.models.weights import load_state_dict, state_dict_hash

logger = logging.getLogger("vlcd_dist.train")

STAGES = ("predistill", "distill")


def stage_stream(cfg: TrainConfig, stage: str, views: int | None = None) -> StreamConfig:
    """The training stream of ``stage`` (natural shards for predistill, placenta train for
    distill), with ``views`` seeded views (None: ``data.views``)."""
    if stage not in STAGES:
        raise ConfigError(f"--stage {stage!r}: use one of {STAGES}")
    if stage == "distill":
        stream = cfg.data.stream(cfg.data.placenta, split="train", train=True, seed=cfg.run.seed)
    else:
        stream = cfg.data.stream(cfg.data.natural, split=None, train=True, seed=cfg.run.seed)
    if views is not None:
        stream = dataclasses.replace(stream, views=int(views))
    return stream


def _image_weights_hash(cfg: TrainConfig, frozen: FrozenTeacher | None) -> str:
    """A hash of the weights behind the teacher's image embeddings: for this package's teacher,
    the image-tower tensors of teacher.checkpoint (read from the file, no tower built); for an
    open_clip / HF CLIP teacher, its image parameters (the model must be built)."""
    if cfg.teacher.source == "vlcd":
        path = cfg.teacher.checkpoint
        if path is None:
            raise ConfigError(
                "the teacher cache needs teacher.checkpoint (the trained teacher whose "
                "embeddings it stores, or checks); run `vlcd train-teacher` first"
            )
        if not Path(path).is_file():
            raise ConfigError(f"teacher.checkpoint={path!r} does not exist; fix the path")
        if str(path).endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                image = {k: f.get_tensor(k) for k in f.keys() if k.startswith("image.")}  # noqa: SIM118
        else:
            image = {k: v for k, v in load_state_dict(path).items() if k.startswith("image.")}
        return state_dict_hash(image)
    if frozen is None:
        raise ValueError("a foreign teacher's identity needs the built teacher")
    params = list(frozen.teacher.image_parameters())
    return state_dict_hash({f"{i:05d}": p for i, p in enumerate(params)})


def teacher_identity(cfg: TrainConfig, frozen: FrozenTeacher | None = None) -> dict[str, Any]:
    """What makes the cached embeddings: teacher source and model, a hash of its image weights,
    the autocast dtype of its forward, d; and the hash of all that."""
    t = cfg.teacher
    if t.source == "vlcd":
        model: Any = t.image_model or t.preset
    elif t.source == "open_clip":
        model = dataclasses.asdict(t.open_clip)
    else:
        model = t.hf_clip.model
    ident: dict[str, Any] = {
        "source": t.source,
        "model": model,
        "image_weights": _image_weights_hash(cfg, frozen),
        "autocast_dtype": t.autocast_dtype,
    }
    if t.source == "vlcd":
        ident["preset"] = t.preset
        ident["embed_dim"] = t.embed_dim
    ident["hash"] = digest(ident)
    return ident


def open_cache(cfg: TrainConfig, stage: str, frozen: FrozenTeacher | None = None) -> TeacherCache:
    """The run's ``teacher.cache``, checked against its teacher, shard set and augmentation
    recipe (refused with the reason otherwise), loaded into memory."""
    assert cfg.teacher.cache is not None
    cache = TeacherCache.open(cfg.teacher.cache)
    stream = stage_stream(cfg, stage, views=cfg.data.views or cache.views)
    shard_set = resolve_shards(stream.shards, stream.split, stream.storage)
    cache.check(
        stage=stage,
        teacher=teacher_identity(cfg, frozen),
        shards=shard_fingerprint(shard_set),
        recipe=view_recipe(stream),
    )
    cache.load()
    logger.info(
        "%s: teacher embeddings of %d samples x %d views from %s (no teacher forward)",
        stage,
        len(cache),
        cache.views,
        cache.folder,
    )
    return cache


def write_cache(
    cfg: TrainConfig,
    frozen: FrozenTeacher,
    *,
    stage: str,
    views: int,
    out: str | Path,
    dtype: str = "fp16",
) -> Path:
    """Embed every seeded view of every sample of ``stage``'s shard set with ``frozen``, the
    recipe's frozen teacher (:func:`vlcd_dist.train.stages.load_frozen_teacher`), on its
    device; write the cache into ``out`` (manifest.json last). Returns ``out``."""
    if views < 1:
        raise ConfigError(f"--views {views}: give at least 1 view per sample")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: use one of {sorted(DTYPES)}")
    stream = stage_stream(cfg, stage, views)
    stream.validate()
    shard_set = resolve_shards(stream.shards, stream.split, stream.storage)
    device = next(frozen.parameters()).device
    ident = teacher_identity(cfg, frozen)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_batch = max(1, cfg.data.batch_size)
    t0, samples = time.perf_counter(), 0

    def embed(images: list[torch.Tensor]) -> torch.Tensor:
        z = frozen.encode_image(torch.stack(images).to(device))
        return z.reshape(-1, views, z.shape[-1]).to("cpu", DTYPES[dtype])

    for url in shard_set.urls:
        keys: list[str] = []
        blocks: list[torch.Tensor] = []
        pending: list[torch.Tensor] = []
        for key, images in iter_views(shard_set, stream, url, views):
            keys.append(key)
            pending.extend(images)
            if len(pending) >= per_batch * views:
                blocks.append(embed(pending))
                pending = []
        if pending:
            blocks.append(embed(pending))
        z = torch.cat(blocks) if blocks else torch.zeros(0, views, frozen.embed_dim)
        write_shard(shard_file(out, url), keys, z.to(DTYPES[dtype]))
        samples += len(keys)
    manifest = {
        "stage": stage,
        "dtype": dtype,
        "views": views,
        "embed_dim": frozen.embed_dim,
        "logit_scale": float(frozen.get_logit_scale()),
        "samples": samples,
        "teacher": ident,
        "shards": shard_fingerprint(shard_set),
        "recipe": view_recipe(stream),
    }
    write_manifest(out, manifest)
    logger.info(
        "cache-teacher: %d samples x %d views of %d shards embedded in %.1f s into %s",
        samples,
        views,
        len(shard_set.urls),
        time.perf_counter() - t0,
        out,
    )
    return out

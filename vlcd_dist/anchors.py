"""Text anchors u = mean_j h(sentence_j) (the paper's F(v-bar)), computed once per teacher.

A report is split into sentences; each sentence goes through the frozen teacher's text tower
and projection; the anchor is the mean of those sentence embeddings. Anchors depend only on
the teacher, so they are cached once in a safetensors file that every student and run reuses:

* tensor ``anchors``: [N, d] fp32, row i belongs to ``keys[i]``;
* metadata ``keys``: JSON list of the N sample keys (``__key__`` of the shards);
* metadata ``teacher_hash``: SHA-256 of the text tower's state_dict (encoder + projection);
* metadata ``recipe``: JSON of what else shaped the anchors (pooling, max length, dtype, ...).

A cache whose teacher hash differs from the current teacher's is refused
(:class:`StaleAnchorCacheError`). The keys live in the header, which safetensors caps at
100 MB: a few million keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vlcd_dist.errors import VlcdError
from vlcd_dist.io import save_tensors
from vlcd_dist.models.weights import state_dict_hash

if TYPE_CHECKING:
    from vlcd_dist.models.teacher import FrozenTeacher, VisionLanguageTeacher
    from vlcd_dist.models.towers import TextTower

ANCHOR_FORMAT = "vlcd-anchors/1"
SPLITTER_VERSION = "regex-v1"
TENSOR_NAME = "anchors"

# Sentence ends: . ! ? followed by whitespace, or a line break. Decimals ("3.5 cm") have no
# space after the dot and stay whole.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*[\r\n]+\s*")


class AnchorCacheError(VlcdError, ValueError):
    """An anchor cache cannot be built or read as asked."""


class StaleAnchorCacheError(AnchorCacheError):
    """An anchor cache built by another teacher (or in another format) than the one in use."""


class MissingAnchorError(AnchorCacheError, KeyError):
    """Sample keys that the anchor cache does not hold."""


def split_sentences(report: str) -> list[str]:
    """Sentences of a report, stripped, empty ones dropped.

    A report without any sentence (empty or whitespace) gives ``[""]``, so every report has an
    anchor (the embedding of the empty text).
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(report)]
    sentences = [s for s in sentences if s]
    return sentences or [""]


def _text_tower(teacher: TextTower | VisionLanguageTeacher | FrozenTeacher) -> TextTower:
    tower = getattr(teacher, "text", teacher)
    if not hasattr(tower, "encode") or not hasattr(tower, "tokenize"):
        raise TypeError(f"expected a teacher or its text tower, got {type(teacher).__name__}")
    return tower  # type: ignore[return-value]


def teacher_text_hash(teacher: TextTower | VisionLanguageTeacher | FrozenTeacher) -> str:
    """SHA-256 of the state_dict that produces anchors: text encoder + text projection."""
    return state_dict_hash(_text_tower(teacher))


def _resolve(dtype: str | torch.dtype) -> torch.dtype:
    from vlcd_dist.models.teacher import resolve_dtype

    return resolve_dtype(dtype)


def _default_dtype(teacher: object, dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return _resolve(dtype)
    frozen = getattr(teacher, "autocast_dtype", None)
    return frozen if isinstance(frozen, torch.dtype) else torch.bfloat16


def embed_sentences(
    teacher: TextTower | VisionLanguageTeacher | FrozenTeacher,
    sentences: Sequence[str],
    *,
    batch_size: int = 128,
    autocast_dtype: str | torch.dtype | None = None,
) -> torch.Tensor:
    """h(sentence) for each sentence: [S, d] fp32, in input order.

    Runs under ``torch.no_grad`` and autocast (``autocast_dtype``; default: the frozen
    teacher's dtype, else bfloat16; "float32" disables autocast). Sentences are batched by
    length so little compute goes to padding.
    """
    tower = _text_tower(teacher)
    dtype = _default_dtype(teacher, autocast_dtype)
    device = tower.proj.weight.device
    out = torch.empty(len(sentences), tower.proj.out_features, dtype=torch.float32)
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    was_training = tower.training
    tower.eval()
    try:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
        ):
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = {
                    k: v.to(device) for k, v in tower.tokenize([sentences[i] for i in idx]).items()
                }
                out[torch.tensor(idx)] = tower(**batch).float().cpu()
    finally:
        tower.train(was_training)
    return out


def compute_text_anchors(
    teacher: TextTower | VisionLanguageTeacher | FrozenTeacher,
    reports: Sequence[str],
    *,
    batch_size: int = 128,
    autocast_dtype: str | torch.dtype | None = None,
) -> torch.Tensor:
    """Anchor of each report, the mean of its sentence embeddings: [N, d] fp32 on CPU.

    Identical sentences (template lines shared by many reports) are embedded once.
    """
    per_report = [split_sentences(r) for r in reports]
    unique: dict[str, int] = {}
    owner_rows: list[int] = []
    sentence_rows: list[int] = []
    for row, sentences in enumerate(per_report):
        for s in sentences:
            sentence_rows.append(unique.setdefault(s, len(unique)))
            owner_rows.append(row)
    embedded = embed_sentences(
        teacher, list(unique), batch_size=batch_size, autocast_dtype=autocast_dtype
    )
    dim = embedded.shape[1]
    sums = torch.zeros(len(reports), dim, dtype=torch.float32)
    sums.index_add_(0, torch.tensor(owner_rows, dtype=torch.long), embedded[sentence_rows])
    counts = torch.tensor([len(s) for s in per_report], dtype=torch.float32).unsqueeze(1)
    return sums / counts


def anchor_recipe(
    teacher: TextTower | VisionLanguageTeacher | FrozenTeacher,
    autocast_dtype: str | torch.dtype | None = None,
) -> dict[str, object]:
    """What besides the weights shaped the anchors; stored in the cache for the record."""
    tower = _text_tower(teacher)
    return {
        "text_model": str(tower.model_name),
        "pooling": tower.pooling,
        "max_length": tower.max_length,
        "autocast_dtype": str(_default_dtype(teacher, autocast_dtype)).removeprefix("torch."),
        "splitter": SPLITTER_VERSION,
        "aggregate": "mean",
    }


def _chunks(samples: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_anchor_cache(
    teacher: TextTower | VisionLanguageTeacher | FrozenTeacher,
    samples: Iterable[tuple[str, str]],
    path: str | Path,
    *,
    batch_size: int = 128,
    reports_per_chunk: int = 4096,
    autocast_dtype: str | torch.dtype | None = None,
) -> Path:
    """Compute the anchors of (key, report) pairs and write the cache file atomically.

    samples: (sample key, report text) pairs, e.g. ``(__key__, txt)`` read from the shards;
        consumed in chunks so reports need not fit in memory at once. Keys must be unique.
    path: the safetensors file to write (parent folders are created).
    Returns ``path``. Collective-free: build on one rank, then let every rank read it.
    """
    path = Path(path)
    keys: list[str] = []
    seen: set[str] = set()
    parts: list[torch.Tensor] = []
    for chunk in _chunks(samples, reports_per_chunk):
        for key, _ in chunk:
            if key in seen:
                raise AnchorCacheError(f"duplicate sample key {key!r}: anchors are keyed by sample")
            seen.add(key)
            keys.append(key)
        parts.append(
            compute_text_anchors(
                teacher,
                [report for _, report in chunk],
                batch_size=batch_size,
                autocast_dtype=autocast_dtype,
            )
        )
    if not keys:
        raise AnchorCacheError(
            "no (key, report) samples given: nothing to build an anchor cache from"
        )
    anchors = torch.cat(parts).contiguous()
    metadata = {
        "format": ANCHOR_FORMAT,
        "keys": json.dumps(keys),
        "teacher_hash": teacher_text_hash(teacher),
        "recipe": json.dumps(anchor_recipe(teacher, autocast_dtype)),
        "dim": str(anchors.shape[1]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole or not at all: a crash must never leave a truncated cache that looks valid.
    return save_tensors({TENSOR_NAME: anchors}, path, metadata=metadata)


class AnchorTable:
    """Anchors held in memory for a known set of keys; looks up batches by key."""

    def __init__(self, keys: Sequence[str], anchors: torch.Tensor) -> None:
        """keys: N sample keys; anchors: [N, d], row i for keys[i]."""
        if len(keys) != anchors.shape[0]:
            raise ValueError(f"{len(keys)} keys for {anchors.shape[0]} anchor rows")
        self.keys = list(keys)
        self.anchors = anchors
        self._row = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    def lookup(self, keys: Sequence[str]) -> torch.Tensor:
        """Anchors of a batch's keys, in order: [B, d]."""
        rows = _rows(self._row, keys, "the loaded anchor table")
        return self.anchors.index_select(0, torch.tensor(rows, dtype=torch.long))


def _rows(index: dict[str, int], keys: Sequence[str], where: str) -> list[int]:
    missing = [k for k in keys if k not in index]
    if missing:
        raise MissingAnchorError(
            f"{len(missing)} sample key(s) have no anchor in {where} (e.g. {missing[:3]}); "
            "the cache was built from other shards: rebuild it over the shards in use"
        )
    return [index[k] for k in keys]


class AnchorCache:
    """Reader of an anchor cache file; checks it belongs to the current teacher.

    Opening reads only the header. :meth:`get` reads just the rows asked for (contiguous runs
    through ``safe_open(...).get_slice``), :meth:`load` a whole table or a rank's subset.
    """

    def __init__(self, path: str | Path, expected_teacher_hash: str | None = None) -> None:
        """path: the cache file. expected_teacher_hash: refuse the file unless it matches."""
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.is_file():
            raise AnchorCacheError(
                f"no text-anchor cache at {self.path}; build it with "
                "vlcd_dist.anchors.build_anchor_cache for this teacher"
            )
        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
        if meta.get("format") != ANCHOR_FORMAT or TENSOR_NAME not in names:
            raise StaleAnchorCacheError(
                f"{self.path} is not a {ANCHOR_FORMAT} anchor cache (format "
                f"{meta.get('format')!r}); rebuild it with vlcd_dist.anchors.build_anchor_cache"
            )
        self.teacher_hash: str = meta["teacher_hash"]
        self.recipe: dict[str, object] = json.loads(meta.get("recipe", "{}"))
        self.keys: list[str] = json.loads(meta["keys"])
        self.dim = int(meta["dim"])
        self._row = {k: i for i, k in enumerate(self.keys)}
        if expected_teacher_hash is not None:
            self.verify(expected_teacher_hash)

    @classmethod
    def for_teacher(
        cls, path: str | Path, teacher: TextTower | VisionLanguageTeacher | FrozenTeacher
    ) -> AnchorCache:
        """Open ``path`` and refuse it unless it was built by ``teacher``'s text tower."""
        return cls(path, expected_teacher_hash=teacher_text_hash(teacher))

    def verify(self, teacher_hash: str) -> None:
        """Raise :class:`StaleAnchorCacheError` unless the cache was built by this teacher."""
        if teacher_hash != self.teacher_hash:
            raise StaleAnchorCacheError(
                f"stale text-anchor cache {self.path}: it was built by a teacher whose text "
                f"tower hashes to {self.teacher_hash}, but the current teacher hashes to "
                f"{teacher_hash}. Its anchors do not match this teacher; delete the file and "
                "rebuild it with vlcd_dist.anchors.build_anchor_cache (the anchor step of the "
                "pipeline), or point the run at the cache built for this teacher"
            )

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """Anchors of ``keys`` in the given order: [len(keys), d] fp32, read row ranges only."""
        from safetensors import safe_open

        rows = _rows(self._row, keys, str(self.path))
        wanted = sorted(set(rows))
        # Consecutive rows become one slice read, so a rank's shard (contiguous keys) costs a
        # few reads instead of one per sample.
        runs: list[tuple[int, int]] = []
        for r in wanted:
            if runs and runs[-1][1] == r:
                runs[-1] = (runs[-1][0], r + 1)
            else:
                runs.append((r, r + 1))
        with safe_open(str(self.path), framework="pt") as f:
            table = f.get_slice(TENSOR_NAME)
            pieces = [table[a:b] for a, b in runs]
        block = torch.cat(pieces) if pieces else torch.empty(0, self.dim)
        position = {r: i for i, r in enumerate(wanted)}
        return block.index_select(0, torch.tensor([position[r] for r in rows], dtype=torch.long))

    def load(self, keys: Sequence[str] | None = None) -> AnchorTable:
        """An in-memory :class:`AnchorTable`: every row, or only ``keys`` (a rank's subset)."""
        if keys is None:
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                return AnchorTable(self.keys, f.get_tensor(TENSOR_NAME))
        keys = list(dict.fromkeys(keys))
        return AnchorTable(keys, self.get(keys))

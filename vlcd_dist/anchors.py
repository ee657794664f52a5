"""Text anchors u = mean_j h(sentence_j) (the paper's F(v-bar)), computed once per teacher.

A report is split into sentences; each sentence goes through the frozen teacher's text tower
and projection; the anchor is the mean of those sentence embeddings. Anchors depend only on
the teacher, so they are cached once in a safetensors file that every student and run reuses:

* tensor ``anchors``: [N, d] fp32, row i belongs to ``keys[i]``;
* metadata ``keys``: JSON list of the N sample keys (``__key__`` of the shards);
* metadata ``teacher_hash``: SHA-256 of the text tower's state_dict (encoder + projection);
* metadata ``recipe``: JSON of what else shaped the anchors (pooling, max length, dtype, ...).

A cache whose teacher hash (or sentence splitter) differs from the current one is refused
(:class:`StaleAnchorCacheError`). The keys live in the header, which safetensors caps at
100 MB: a few million keys.

:func:`split_sentences` is the one sentence splitter of the package: the anchors, the
teacher's training text (:func:`tokenize_reports`, :func:`report_state_table`) and the
zero-shot prompts all go through it.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vlcd_dist import distributed as vdist
from vlcd_dist.errors import VlcdError
from vlcd_dist.io import save_tensors
from vlcd_dist.models.towers import average_sentences
from vlcd_dist.models.weights import state_dict_hash

if TYPE_CHECKING:
    from vlcd_dist.models.teacher import FrozenTeacher, VisionLanguageTeacher
    from vlcd_dist.models.towers import TextTower

logger = logging.getLogger(__name__)

ANCHOR_FORMAT = "vlcd-anchors/1"
SPLITTER_VERSION = "pysbd-clinical-v1"
"""Names the sentence splitter in every anchor cache; a cache of another splitter is stale."""
TENSOR_NAME = "anchors"
ANCHOR_FILE = "anchors.safetensors"
"""The anchor cache's file name beside the teacher's export (train-teacher writes it there)."""

# pySBD's English rules keep "Dr.", "e.g.", "i.e.", "Fig.", "vs." and decimals ("2.5 cm")
# inside their sentence; these clinical abbreviations are missing from its list. Plain ones
# keep their period before a lower-case word or a number ("approx. 30 %"); prepositive ones
# before anything ("cf. Fig. 2").
_CLINICAL_ABBREVIATIONS = ("approx", "ca", "cf", "figs", "incl", "resp", "wt")
_CLINICAL_PREPOSITIVE = ("cf", "figs")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


class AnchorCacheError(VlcdError, ValueError):
    """An anchor cache cannot be built or read as asked."""


class StaleAnchorCacheError(AnchorCacheError):
    """An anchor cache built by another teacher (or in another format) than the one in use."""


class MissingAnchorError(AnchorCacheError, KeyError):
    """Sample keys that the anchor cache does not hold."""


@functools.cache
def _segmenter() -> Any:
    import pysbd
    from pysbd.lang.english import English

    class ClinicalEnglish(English):
        class Abbreviation(English.Abbreviation):
            ABBREVIATIONS = [*English.Abbreviation.ABBREVIATIONS, *_CLINICAL_ABBREVIATIONS]
            PREPOSITIVE_ABBREVIATIONS = [
                *English.Abbreviation.PREPOSITIVE_ABBREVIATIONS,
                *_CLINICAL_PREPOSITIVE,
            ]

    segmenter = pysbd.Segmenter(language="en", clean=False)
    segmenter.language_module = ClinicalEnglish
    return segmenter


@functools.lru_cache(maxsize=65536)
def _split_line(line: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in _segmenter().segment(line))


def split_sentences(report: str) -> list[str]:
    """Sentences of a report, stripped, empty ones dropped; a line break always ends one.

    pySBD finds the sentence ends, with clinical abbreviations ("approx.", "cf.", "ca.") added
    to its English list, so "Dr. Smith", "e.g. funisitis", "Fig. 2" and "2.5 cm" stay inside
    their sentence. A report without any sentence (empty or whitespace) gives ``[""]``, so
    every report has an anchor (the embedding of the empty text).
    """
    sentences = [s for line in _LINE_BREAKS.split(report.strip()) for s in _split_line(line)]
    sentences = [s for s in sentences if s]
    return sentences or [""]


def report_sentences(
    reports: Sequence[str],
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The distinct sentences of ``reports`` and which report holds which.

    Returns (sentences [U], sentence_index [P], report_index [P]): pair p says sentence
    ``sentence_index[p]`` belongs to report ``report_index[p]``, as
    :func:`~vlcd_dist.models.towers.average_sentences` takes them. A sentence shared by many
    reports (a template line) is listed, and embedded, once.
    """
    unique: dict[str, int] = {}
    sentence_rows: list[int] = []
    report_rows: list[int] = []
    for row, report in enumerate(reports):
        for s in split_sentences(report):
            sentence_rows.append(unique.setdefault(s, len(unique)))
            report_rows.append(row)
    as_long = functools.partial(torch.tensor, dtype=torch.long)
    return list(unique), as_long(sentence_rows), as_long(report_rows)


def tokenize_reports(tower: TextTower, reports: Sequence[str]) -> dict[str, torch.Tensor]:
    """Inputs of the sentence-mean text feature of a batch of reports, for the teacher's
    forward: the distinct sentences tokenized (``input_ids``, ``attention_mask`` [U, T]) and
    ``sentence_index``, ``report_index`` [P] (see :func:`report_sentences`)."""
    sentences, sentence_index, report_index = report_sentences(reports)
    return {
        **tower.tokenize(sentences),
        "sentence_index": sentence_index,
        "report_index": report_index,
    }


def _text_tower(teacher: TextTower | VisionLanguageTeacher | FrozenTeacher) -> TextTower:
    tower = getattr(teacher, "text", teacher)
    if not hasattr(tower, "encode") or not hasattr(tower, "tokenize"):
        raise TypeError(f"expected a teacher or its text tower, got {type(teacher).__name__}")
    return tower  # type: ignore[return-value]


def teacher_text_hash(teacher: TextTower | VisionLanguageTeacher | FrozenTeacher) -> str:
    """SHA-256 of the state_dict that produces anchors: text encoder + text projection (a
    teacher's own ``text_hash()``, which foreign teachers compute over their text weights)."""
    own = getattr(teacher, "text_hash", None)
    if callable(own):
        return str(own())
    return state_dict_hash(_text_tower(teacher))


def _tower_device(tower: Any) -> torch.device:
    device = getattr(tower, "device", None)
    return device if isinstance(device, torch.device) else tower.proj.weight.device


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
    project: bool = True,
) -> torch.Tensor:
    """h(sentence) for each sentence: [S, d] fp32, in input order; with ``project=False`` the
    pooled encoder states before the projection, [S, H].

    Runs under ``torch.no_grad`` and autocast (``autocast_dtype``; default: the frozen
    teacher's dtype, else bfloat16; "float32" disables autocast). Sentences are batched by
    length so little compute goes to padding.
    """
    tower = _text_tower(teacher)
    dtype = _default_dtype(teacher, autocast_dtype)
    device = _tower_device(tower)
    if not project and not hasattr(tower, "pool"):
        raise AnchorCacheError(
            f"{type(tower).__name__} has no pooled states before a projection: project=False "
            "works with this package's TextTower only"
        )
    width = (getattr(tower, "embed_dim", None) or tower.proj.out_features) if project else None
    width = width or tower.hidden_size
    run = tower.forward if project else tower.pool
    out = torch.empty(len(sentences), width, dtype=torch.float32)
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
                out[torch.tensor(idx)] = run(**batch).float().cpu()
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
    sentences, sentence_index, report_index = report_sentences(reports)
    embedded = embed_sentences(
        teacher, sentences, batch_size=batch_size, autocast_dtype=autocast_dtype
    )
    return average_sentences(embedded, sentence_index, report_index, len(reports))


def report_state_table(
    teacher: TextTower | VisionLanguageTeacher | FrozenTeacher,
    samples: Iterable[tuple[str, str]],
    *,
    batch_size: int = 128,
    autocast_dtype: str | torch.dtype | None = None,
    device: torch.device | None = None,
) -> AnchorTable:
    """Per report, the mean of its sentences' pooled encoder states (before the projection):
    an :class:`AnchorTable` of [N, H] fp32 rows keyed by sample key.

    For training the teacher with a locked text encoder: the projection is affine, so
    ``proj(row)`` is the report's sentence-mean text feature, and the encoder runs once per
    distinct sentence instead of every step. Collective when distributed: every rank passes the
    same samples, embeds every world-th sentence and receives the others' (``device``: where
    the gathered tensors travel, the tower's device by default).
    """
    keys, reports = [], []
    for key, report in samples:
        keys.append(key)
        reports.append(report)
    if len(set(keys)) != len(keys):
        raise AnchorCacheError("duplicate sample keys: text states are keyed by sample")
    sentences, sentence_index, report_index = report_sentences(reports)
    rank, world = vdist.rank_and_world()
    mine = embed_sentences(
        teacher,
        sentences[rank::world],
        batch_size=batch_size,
        autocast_dtype=autocast_dtype,
        project=False,
    )
    if world > 1:
        device = device or _tower_device(_text_tower(teacher))
        gathered = vdist.gather_no_grad(mine.to(device)).cpu()
        # Rank r held sentences r, r + world, ...: put the rows back in sentence order.
        order = torch.cat([torch.arange(r, len(sentences), world) for r in range(world)])
        states = torch.empty_like(gathered)
        states[order] = gathered
    else:
        states = mine
    return AnchorTable(keys, average_sentences(states, sentence_index, report_index, len(keys)))


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
    tower = _text_tower(teacher)
    # The cache counts its own cuts: the tower's record of earlier ones is set aside meanwhile.
    cut_before, tower.cut_texts = tower.cut_texts, set()
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
    # Recorded with the recipe, so a cache tells whether any sentence was cut.
    truncated = tower.truncated
    tower.cut_texts |= cut_before
    recipe = {**anchor_recipe(teacher, autocast_dtype), "truncated_sentences": truncated}
    if truncated:
        logger.warning(
            "anchors: %d sentence(s) longer than max_length=%d tokens were truncated",
            truncated,
            tower.max_length,
        )
    metadata = {
        "format": ANCHOR_FORMAT,
        "keys": json.dumps(keys),
        "teacher_hash": teacher_text_hash(teacher),
        "recipe": json.dumps(recipe),
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
        """Raise :class:`StaleAnchorCacheError` unless the cache was built by this teacher,
        with this version's sentence splitter."""
        if teacher_hash != self.teacher_hash:
            raise StaleAnchorCacheError(
                f"stale text-anchor cache {self.path}: it was built by a teacher whose text "
                f"tower hashes to {self.teacher_hash}, but the current teacher hashes to "
                f"{teacher_hash}. Its anchors do not match this teacher; delete the file and "
                "rebuild it with vlcd_dist.anchors.build_anchor_cache (the anchor step of the "
                "pipeline), or point the run at the cache built for this teacher"
            )
        splitter = self.recipe.get("splitter")
        if splitter != SPLITTER_VERSION:
            raise StaleAnchorCacheError(
                f"stale text-anchor cache {self.path}: its reports were split into sentences by "
                f"{splitter!r}, this version splits them with {SPLITTER_VERSION!r}, so its "
                "anchors differ from what the teacher now trains on; delete the file and "
                "rebuild it (`vlcd train-teacher` writes it, or "
                "vlcd_dist.anchors.build_anchor_cache)"
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

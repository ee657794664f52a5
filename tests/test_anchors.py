"""Text anchors with the packaged MiniLM: build, reload, compare to a direct recomputation."""
# ruff: noqa: E402 - the hub must be switched off before transformers is imported.

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlcd_dist.anchors import (
    AnchorCache,
    AnchorCacheError,
    StaleAnchorCacheError,
    build_anchor_cache,
    compute_text_anchors,
    split_sentences,
    teacher_text_hash,
)
from vlcd_dist.models import FrozenTeacher, create_teacher

SAMPLES = [
    ("case-000", "Placenta, 450 g. Meconium-laden macrophages in the membranes."),
    ("case-001", "Acute chorioamnionitis, stage 2.\nFunisitis present. Umbilical cord 3.5 cm."),
    ("case-002", "Unremarkable placenta."),
    ("case-003", "Placenta, 450 g. Villous infarct! No inflammation?"),
    ("case-004", "   "),
    ("case-005", "Maternal vascular malperfusion"),
]


@pytest.fixture(scope="module")
def frozen() -> FrozenTeacher:
    torch.manual_seed(0)
    return FrozenTeacher(create_teacher("tiny_resnet18_minilm"))


@pytest.fixture(scope="module")
def cache_path(frozen: FrozenTeacher, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("anchors") / "teacher" / "anchors.safetensors"
    return build_anchor_cache(frozen, iter(SAMPLES), path, batch_size=3, autocast_dtype="float32")


def _direct(frozen: FrozenTeacher, report: str) -> torch.Tensor:
    """F(v-bar) the slow way: each sentence alone through the text tower, then the mean."""
    tower = frozen.text
    with torch.no_grad():
        rows = [tower.encode([s]).float()[0] for s in split_sentences(report)]
    return torch.stack(rows).mean(0)


def test_split_sentences() -> None:
    assert split_sentences("Placenta 3.5 cm. Meconium present!\nNo chorioamnionitis") == [
        "Placenta 3.5 cm.",
        "Meconium present!",
        "No chorioamnionitis",
    ]
    assert split_sentences("One.  Two?\r\n\nThree") == ["One.", "Two?", "Three"]
    assert split_sentences("   ") == [""]


def test_cache_reload_equals_direct_recomputation(frozen: FrozenTeacher, cache_path: Path) -> None:
    cache = AnchorCache.for_teacher(cache_path, frozen)
    keys = [k for k, _ in SAMPLES]
    assert cache.keys == keys and len(cache) == len(SAMPLES)
    assert cache.dim == frozen.embed_dim
    table = cache.load()
    assert table.anchors.shape == (len(SAMPLES), frozen.embed_dim)
    assert table.anchors.dtype == torch.float32
    for key, report in SAMPLES:
        torch.testing.assert_close(
            table.lookup([key])[0], _direct(frozen, report), atol=1e-5, rtol=0
        )
    # Duplicate sentences across reports are embedded once, yet both reports still hold them.
    assert not torch.equal(table.lookup(["case-000"]), table.lookup(["case-003"]))


def test_reader_loads_only_requested_rows(cache_path: Path, frozen: FrozenTeacher) -> None:
    cache = AnchorCache(cache_path, expected_teacher_hash=frozen.text_hash())
    full = cache.load().anchors
    wanted = ["case-004", "case-000", "case-001", "case-004"]
    got = cache.get(wanted)
    assert torch.equal(got, full[[4, 0, 1, 4]])
    subset = cache.load(["case-002", "case-003"])
    assert len(subset) == 2 and "case-000" not in subset
    assert torch.equal(subset.lookup(["case-003", "case-002"]), full[[3, 2]])
    with pytest.raises(KeyError, match="rebuild"):
        cache.get(["case-999"])


def test_cache_file_is_plain_safetensors_with_metadata(
    cache_path: Path, frozen: FrozenTeacher
) -> None:
    with safe_open(str(cache_path), framework="pt") as f:
        assert list(f.keys()) == ["anchors"]
        meta = f.metadata()
    assert json.loads(meta["keys"]) == [k for k, _ in SAMPLES]
    assert meta["teacher_hash"] == teacher_text_hash(frozen) == frozen.text_hash()
    recipe = json.loads(meta["recipe"])
    assert recipe["pooling"] == "mean" and recipe["autocast_dtype"] == "float32"
    assert not list(cache_path.parent.glob(".*tmp*"))


def test_changed_teacher_is_refused(cache_path: Path, frozen: FrozenTeacher) -> None:
    changed = copy.deepcopy(frozen.text)
    with torch.no_grad():
        changed.proj.weight[0, 0] += 1e-3
    new_hash = teacher_text_hash(changed)
    assert new_hash != frozen.text_hash()
    with pytest.raises(StaleAnchorCacheError) as err:
        AnchorCache.for_teacher(cache_path, changed)
    message = str(err.value)
    assert str(cache_path) in message
    assert new_hash in message and frozen.text_hash() in message
    assert "rebuild" in message


def test_the_image_tower_does_not_invalidate_anchors(frozen: FrozenTeacher) -> None:
    before = frozen.text_hash()
    image_weight = frozen.teacher.image.proj.weight
    saved = image_weight.detach().clone()
    with torch.no_grad():
        image_weight.add_(1.0)
    try:
        assert frozen.text_hash() == before
    finally:
        with torch.no_grad():
            image_weight.copy_(saved)


def test_bf16_autocast_anchors_are_close(frozen: FrozenTeacher) -> None:
    reports = [r for _, r in SAMPLES]
    fp32 = compute_text_anchors(frozen, reports, autocast_dtype="float32")
    bf16 = compute_text_anchors(frozen, reports)  # the frozen teacher's default: bfloat16
    assert bf16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
    assert (cos > 0.99).all(), cos


def test_bad_inputs_are_explained(tmp_path: Path, frozen: FrozenTeacher) -> None:
    with pytest.raises(ValueError, match="duplicate sample key"):
        build_anchor_cache(frozen, [("a", "x."), ("a", "y.")], tmp_path / "dup.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other))
    with pytest.raises(StaleAnchorCacheError, match="not a vlcd-anchors"):
        AnchorCache(other)
    with pytest.raises(AnchorCacheError, match="build_anchor_cache"):
        AnchorCache(tmp_path / "missing.safetensors")

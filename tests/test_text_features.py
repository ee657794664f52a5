"""The text a teacher trains on is the text its anchors see: one sentence splitter, the
sentence-mean feature, computed once for a locked encoder, and no silent truncation."""
# ruff: noqa: E402 - the hub must be switched off before transformers is imported.

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util
import json
import logging
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import REPO, TINY_RECIPE
from safetensors.torch import load_file

from vlcd_dist.anchors import (
    AnchorCache,
    StaleAnchorCacheError,
    build_anchor_cache,
    compute_text_anchors,
    report_state_table,
    split_sentences,
)
from vlcd_dist.config import load_config
from vlcd_dist.models import FrozenTeacher, ModelError, create_teacher
from vlcd_dist.pipelines.launch import multi_rank_command
from vlcd_dist.train import stages
from vlcd_dist.train.stages import TeacherTrainer

# --- sentence splitting -------------------------------------------------------------------------

# Report-style text with every case the old splitter broke: each item is one sentence.
CLINICAL = [
    "The membranes show meconium-laden macrophages in approx. 30% of the roll.",
    "Reviewed with Dr. Smith at the consensus conference.",
    "Acute inflammatory changes (e.g. funisitis) are absent.",
    "The infarct pattern resembles the previous case, cf. Fig. 2 of the prior report.",
    "See Fig. 3 for the cord insertion.",
    "The disc measures 2.5 cm in thickness and 18.0 x 15.5 cm across.",
    "A marginal haematoma of ca. 4 cm is present.",
    "No chorioamnionitis.",
]


def test_split_sentences_keeps_clinical_abbreviations_and_decimals() -> None:
    assert split_sentences(" ".join(CLINICAL)) == CLINICAL
    # A line break still ends a sentence, with or without a full stop.
    assert split_sentences("Diagnosis:\nAcute funisitis, approx. 2 cm\nDr. Lee. Fig. 1.") == [
        "Diagnosis:",
        "Acute funisitis, approx. 2 cm",
        "Dr. Lee.",
        "Fig. 1.",
    ]
    # Units and stages at a sentence end still end it.
    assert split_sentences("The disc weighs 450 g. The cord inserts centrally. Stage 2. Done.") == [
        "The disc weighs 450 g.",
        "The cord inserts centrally.",
        "Stage 2.",
        "Done.",
    ]
    assert split_sentences("  \n ") == [""]


@pytest.fixture(scope="module")
def tiny() -> FrozenTeacher:
    torch.manual_seed(0)
    return FrozenTeacher(create_teacher("tiny_resnet18_minilm"), autocast_dtype="float32")


def test_anchor_cache_of_another_splitter_is_refused(tiny: FrozenTeacher, tmp_path: Path) -> None:
    path = build_anchor_cache(tiny, [("a", CLINICAL[0]), ("b", CLINICAL[1])], tmp_path / "a.st")
    AnchorCache.for_teacher(path, tiny)  # this version's splitter: accepted
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensor = f.metadata(), f.get_tensor("anchors")
    recipe = json.loads(meta["recipe"])
    assert recipe["splitter"] == "pysbd-clinical-v1" and recipe["truncated_sentences"] == 0
    meta["recipe"] = json.dumps({**recipe, "splitter": "regex-v1"})
    save_file({"anchors": tensor}, str(tmp_path / "old.st"), metadata=meta)
    with pytest.raises(StaleAnchorCacheError, match="regex-v1"):
        AnchorCache.for_teacher(tmp_path / "old.st", tiny)


# --- the text tower's limit ---------------------------------------------------------------------


def test_text_limit_defaults_to_the_model_maximum_and_is_checked() -> None:
    teacher = create_teacher("tiny_resnet18_minilm")
    assert teacher.text.max_length == 512  # MiniLM's position embeddings, not a guess
    with pytest.raises(ModelError, match="at most 512"):
        create_teacher("tiny_resnet18_minilm", max_text_length=600)


def test_truncated_texts_are_counted_and_the_first_is_logged(caplog) -> None:
    tower = create_teacher("tiny_resnet18_minilm", max_text_length=12).text
    texts = [
        "Short.",
        "Ten words or so would make a text of about twelve tokens here.",
        " ".join(CLINICAL),
        " ".join(CLINICAL[:3]),
    ]
    lengths = [len(tower.tokenizer(t)["input_ids"]) for t in texts]
    longer = sum(n > 12 for n in lengths)
    assert 0 < longer < len(texts)
    with caplog.at_level(logging.WARNING, logger="vlcd_dist.models.towers"):
        batch = tower.tokenize(texts)
        tower.tokenize(texts)
    assert batch["input_ids"].shape[1] == 12
    assert tower.truncated == longer  # the same texts tokenized twice count once
    assert sum("truncated" in r.message for r in caplog.records) == 1
    # At the default limit (the model's maximum) nothing here is cut.
    roomy = create_teacher("tiny_resnet18_minilm").text
    roomy.tokenize(texts)
    assert roomy.truncated == 0


def test_report_state_table_projects_to_the_anchors(tiny: FrozenTeacher) -> None:
    reports = [" ".join(CLINICAL), CLINICAL[2] + " " + CLINICAL[7], CLINICAL[7]]
    table = report_state_table(tiny, [(f"k{i}", r) for i, r in enumerate(reports)])
    assert table.anchors.shape == (3, tiny.text.hidden_size)
    projected = tiny.text.proj(table.lookup(["k0", "k1", "k2"]))
    torch.testing.assert_close(projected, compute_text_anchors(tiny, reports), atol=1e-5, rtol=0)


# --- stage 0 sees what the anchors see ----------------------------------------------------------


def _teacher_trainer(placenta: Path, natural: Path, out: Path, *sets: str) -> TeacherTrainer:
    recipe = out / "tiny.yaml"
    out.mkdir(parents=True, exist_ok=True)
    recipe.write_text(TINY_RECIPE.format(placenta=placenta, natural=natural))
    cfg = load_config(recipe, [f"run.out={out}", "data.batch_size=6", *sets])
    trainer = TeacherTrainer(cfg)
    trainer.build()
    for t in trainer.trainees:
        t.model.train()
    trainer.on_train_start()
    return trainer


def _step_text_features(trainer: TeacherTrainer, monkeypatch) -> tuple[torch.Tensor, list[str]]:
    """The text features the CLIP loss receives in one micro-step, and the batch's reports."""
    seen: list[torch.Tensor] = []
    real = stages.clip_loss

    def spy(image, text, scale):
        seen.append(text.detach().clone())
        return real(image, text, scale)

    monkeypatch.setattr(stages, "clip_loss", spy)
    batch = next(iter(trainer.loader))
    trainer.micro_step(batch, sync=True, scale=1.0)
    return seen[0], list(batch["text"])


@pytest.mark.parametrize("lock_text", [True, False])
def test_teacher_training_text_feature_is_the_sentence_mean_anchor(
    placenta_shards, natural_shards, tmp_path, monkeypatch, lock_text
) -> None:
    trainer = _teacher_trainer(
        placenta_shards,
        natural_shards,
        tmp_path,
        f"train_teacher.lock_text={str(lock_text).lower()}",
    )
    trainer.teacher.text.eval()  # no dropout noise, to compare with the anchors
    calls = []
    trainer.teacher.text.encoder.register_forward_hook(lambda *_: calls.append(1))
    features, reports = _step_text_features(trainer, monkeypatch)
    encoder_runs = len(calls)
    # Reports of the synthetic set run past 64 (the old limit) and 128 tokens.
    lengths = [len(trainer.teacher.text.tokenizer(r)["input_ids"]) for r in reports]
    assert max(lengths) > 128
    # The same split, the same encoder, the same mean as the distillation anchors.
    anchors = compute_text_anchors(trainer.teacher, reports, autocast_dtype="float32")
    torch.testing.assert_close(features, anchors.to(features.device), atol=1e-5, rtol=0)
    # A locked encoder ran once per sentence before training, never in the step.
    assert (encoder_runs == 0) == lock_text
    assert trainer.teacher.text.truncated == 0


def test_whole_report_text_feature_stays_an_option_and_counts_cuts(
    placenta_shards, natural_shards, tmp_path, monkeypatch
) -> None:
    trainer = _teacher_trainer(
        placenta_shards,
        natural_shards,
        tmp_path,
        "train_teacher.text_feature=report",
        "teacher.max_text_length=128",
    )
    features, reports = _step_text_features(trainer, monkeypatch)
    tower = trainer.teacher.text
    with torch.no_grad():
        whole = tower(**tower.tokenize(reports))
    torch.testing.assert_close(features, whole, atol=1e-5, rtol=0)
    longer = sum(len(tower.tokenizer(r)["input_ids"]) > 128 for r in reports)
    assert longer > 0 and tower.truncated == longer  # the step tokenized them, and so did we


# --- two ranks share the locked encoder's work --------------------------------------------------

WORKER = REPO / "tests" / "workers" / "text_states_worker.py"


def _worker_samples() -> list[tuple[str, str]]:
    spec = importlib.util.spec_from_file_location("text_states_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.SAMPLES


@pytest.mark.multiproc
def test_two_ranks_build_the_same_text_states_as_one(tiny: FrozenTeacher, tmp_path) -> None:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    )
    cmd = multi_rank_command(2, [WORKER, tmp_path], launcher="torchrun")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    one = report_state_table(tiny, _worker_samples())
    for rank in range(2):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert got["sentences"].item() == 10  # each rank embedded half of the 20 sentences
        torch.testing.assert_close(got["states"], one.anchors, atol=1e-5, rtol=0)

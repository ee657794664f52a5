"""Recipes: YAML + --set overrides -> typed, validated config; errors that say how to fix."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from helpers import REPO

from vlcd_dist.config import (
    ConfigError,
    StudentSpec,
    TrainConfig,
    dump_yaml,
    field_docs,
    load_config,
    to_dict,
)
from vlcd_dist.train.optim import warmup_cosine


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_shipped_recipes_load(name: str) -> None:
    cfg = load_config(REPO / "vlcd_dist" / "configs" / f"{name}.yaml")
    assert [s.name for s in cfg.students] == [
        "mobilenetv3_large_100",
        "efficientnet_b0",
        "efficientformer_l1",
    ]
    # The resolved recipe round-trips through YAML unchanged.
    again = load_config(None, [f"{k}={yaml.safe_dump(v)}" for k, v in _flat(to_dict(cfg))])
    assert to_dict(again) == to_dict(cfg)


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flat(v, key + ".")
        else:
            yield key, v


def test_overrides_reach_any_field(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {lr: 1.0e-3}\nstudents: [tiny_resnet, tiny_mobilenetv3]\n")
    cfg = load_config(
        recipe,
        [
            "optim.lr=3e-4",  # YAML 1.1 reads this as a string; it is a number
            "students.1.init_from=/x/predistill",
            "data.image_size=[64, 96]",
            "optim.clip_grad_norm=null",
            "distill.steps=7",
        ],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.students == [
        StudentSpec("tiny_resnet"),
        StudentSpec("tiny_mobilenetv3", init_from="/x/predistill"),
    ]
    assert cfg.data.image_size == (64, 96)
    assert cfg.optim.clip_grad_norm is None
    assert cfg.distill.steps == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "did you mean 'lr'"),
        ("optm.lr=1", "did you mean 'optim'"),
        ("optim.lr=fast", "optim.lr='fast': expected a number"),
        ("optim.lr=-1", "optim.lr=-1.0: expected > 0"),
        ("data.image_size=[64]", "expected a list of 2 values"),
        ("run.mixed_precision=fp8", "one of ('no', 'bf16', 'fp16')"),
        ("students.5.name=x", "index out of range"),
        ("optim.lr", "expected KEY=VALUE"),
        ("checkpoint.resume=maybe", "expected true or false"),
        ("loss.distill_lambda=-2", "use a finite number >= 0"),
        ("eval.latency_precisions=[fp32,int8]", "out of ['fp32', 'bf16', 'fp16']"),
        ("eval.latency_precisions=[]", "e.g. [fp32, bf16]"),
    ],
)
def test_bad_values_are_refused_with_a_fix(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_unknown_key_in_recipe_names_the_closest(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match="data.batchsize.*did you mean 'batch_size'"):
        load_config(recipe)


def test_yes_no_on_off_stay_strings_and_true_false_are_booleans(tmp_path) -> None:
    cfg = load_config(None, ["run.mixed_precision=no", "logging.progress=false"])
    assert cfg.run.mixed_precision == "no" and cfg.logging.progress is False
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run: {mixed_precision: no}\nlogging: {progress: FALSE}\n")
    cfg = load_config(recipe, ["checkpoint.resume=True"])
    assert cfg.run.mixed_precision == "no" and cfg.logging.progress is False
    assert cfg.checkpoint.resume is True
    with pytest.raises(ConfigError, match="logging.progress"):
        load_config(None, ["logging.progress=off"])  # a string now, and progress is a bool


def test_duplicate_students_refused() -> None:
    with pytest.raises(ConfigError, match="distinct names"):
        load_config(None, ["students=[tiny_resnet, tiny_resnet]"])


def test_every_field_has_a_one_line_doc() -> None:
    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs[f.name], f"{cls.__name__}.{f.name} has no doc"
            tp = f.type if not isinstance(f.type, str) else None
            if dataclasses.is_dataclass(tp):
                walk(tp)

    walk(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        default = getattr(TrainConfig(), f.name)
        if dataclasses.is_dataclass(default):
            walk(type(default))


def test_dump_is_yaml_of_the_resolved_recipe() -> None:
    cfg = load_config(None, ["optim.lr=0.5"])
    assert yaml.safe_load(dump_yaml(cfg))["optim"]["lr"] == 0.5


def test_warmup_then_cosine() -> None:
    values = [warmup_cosine(s, total=10, warmup=2) for s in range(10)]
    assert values[0] == pytest.approx(0.5) and values[1] == pytest.approx(1.0)
    assert values[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[2:], values[3:], strict=False))
    assert warmup_cosine(10, total=10, warmup=2, min_ratio=0.1) == pytest.approx(0.1)


def test_zero_shot_prompts_take_several_per_side_and_the_old_pair() -> None:
    cfg = load_config(
        None,
        [
            "eval.zero_shot_prompts.a={positive: [green membranes, meconium staining], "
            "negative: [membranes without discolouration]}",
            "eval.zero_shot_prompts.b=[acute funisitis, a normal umbilical cord]",
        ],
    )
    a, b = cfg.eval.zero_shot_prompts["a"], cfg.eval.zero_shot_prompts["b"]
    assert a.positive == ["green membranes", "meconium staining"]
    assert a.negative == ["membranes without discolouration"]
    assert (b.positive, b.negative) == (["acute funisitis"], ["a normal umbilical cord"])
    # The resolved recipe writes the one format back.
    dumped = yaml.safe_load(dump_yaml(cfg))["eval"]["zero_shot_prompts"]
    assert dumped["b"] == {"positive": ["acute funisitis"], "negative": ["a normal umbilical cord"]}
    # One side of one task can be replaced on the command line.
    demo = REPO / "vlcd_dist" / "configs" / "demo.yaml"
    cfg = load_config(demo, ["eval.zero_shot_prompts.sepsis.negative=[a well neonate]"])
    assert cfg.eval.zero_shot_prompts["sepsis"].negative == ["a well neonate"]
    assert len(cfg.eval.zero_shot_prompts["sepsis"].positive) >= 2
    for bad, message in (
        ("[only one]", "or the pair"),
        ("{positive: [], negative: [x]}", "one or more non-empty prompts"),
        ("{positive: [x], negtive: [y]}", "did you mean 'negative'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, [f"eval.zero_shot_prompts.a={bad}"])


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_shipped_zero_shot_prompts_are_ensembles_without_bare_negations(name: str) -> None:
    # MiniLM hardly encodes a bare "no": "no meconium staining" scores like "meconium staining".
    prompts = load_config(REPO / "vlcd_dist" / "configs" / f"{name}.yaml").eval.zero_shot_prompts
    assert set(prompts) == {"meconium", "fir", "mir", "chorioamnionitis", "sepsis"}
    for task, p in prompts.items():
        assert len(p.positive) >= 2 and len(p.negative) >= 2, task
        for text in p.positive + p.negative:
            assert not re.search(r"\b(no|not|absent|negative for)\b", text, re.I), (task, text)

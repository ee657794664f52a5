"""The layering of DESIGN.md section 5, as behaviour: the library imports and works with
accelerate and deepspeed not installed and without the harness, ``vlcd --help`` and every
``vlcd COMMAND --help`` answer without importing torch, and feature extraction on one rank gives
its rows in key order. Each check runs in a fresh interpreter, where nothing the test session
already imported can hide an import."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import REPO

from vlcd_dist.evaluation.features import extract_features, key_order

LIBRARY = [
    "vlcd_dist.data",
    "vlcd_dist.models",
    "vlcd_dist.losses",
    "vlcd_dist.anchors",
    "vlcd_dist.evaluation",
    "vlcd_dist.evaluation.metrics",
    "vlcd_dist.evaluation.probes",
    "vlcd_dist.evaluation.zeroshot",
    "vlcd_dist.evaluation.robustness",
    "vlcd_dist.evaluation.efficiency",
    "vlcd_dist.evaluation.features",
]
HIDDEN = ["accelerate", "deepspeed"]
NOT_LOADED = [*HIDDEN, "vlcd_dist.train", "vlcd_dist.config"]

COMMANDS = [
    "shards natural",
    "shards placenta",
    "bench models",
    "export",
    "package",
    "predict",
    "train-teacher",
    "predistill",
    "distill",
    "cache-teacher",
    "eval",
    "demo",
    "sweep",
    "report",
]


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (from the repository root); the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the library without accelerate, deepspeed or the harness ------------------------------

# Makes the hidden packages look not installed: every finder is wrapped so that their names are
# not found (find_spec gives None, import raises ModuleNotFoundError), which is what optional
# checks such as transformers' importlib.util.find_spec("accelerate") meet on a bare install.
# (sys.modules[name] = None would make those checks raise ValueError instead.)
HIDE = """
import sys

HIDDEN = {hidden!r}


class Hidden:
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]
"""

LIBRARY_RUN = """
import importlib
import json

import numpy as np

for name in HIDDEN:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{{name}} is still importable: the test hides nothing")
for name in {library!r}:
    importlib.import_module(name)

from vlcd_dist.evaluation.metrics import auc_roc
from vlcd_dist.evaluation.probes import fit_probe
from vlcd_dist.evaluation.zeroshot import zero_shot_scores

# Two classes 8 standard deviations apart on the first axis: any fitted probe separates them.
rng = np.random.default_rng(0)
def split(n):
    y = np.arange(n) % 2
    x = rng.normal(0.0, 0.5, (n, 5))
    x[:, 0] += np.where(y == 1, 2.0, -2.0)
    return x, y
train_x, train_y = split(40)
test_x, test_y = split(20)
probe = fit_probe(train_x, train_y, cs=[0.1, 1.0], folds=2)
scores = probe.scores(test_x)

# Prompt embeddings along the first two axes: a feature along the positive prompt scores +1,
# one along the negative prompt -1, one between them 0.
feats = np.array([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [1.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
zs = zero_shot_scores(feats, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
print(json.dumps({{
    "probe_auc": auc_roc(test_y, scores),
    "flipped_auc": auc_roc(test_y, -scores),
    "probe_c": probe.c,
    "zero_shot": zs.tolist(),
    "zero_shot_auc": auc_roc(np.array([1, 0, 0, 1]), zs),
    "loaded": sorted(m for m in {not_loaded!r} if m in sys.modules),
    "torch": "torch" in sys.modules,
}}))
"""


def test_library_imports_and_evaluates_without_accelerate_deepspeed_or_the_harness() -> None:
    result = _python(
        HIDE.format(hidden=HIDDEN) + LIBRARY_RUN.format(library=LIBRARY, not_loaded=NOT_LOADED)
    )
    assert result["loaded"] == []
    assert result["torch"]  # the library did import (models and features need torch)
    assert result["probe_auc"] == 1.0 and result["flipped_auc"] == 0.0
    assert result["probe_c"] in (0.1, 1.0)
    assert result["zero_shot"] == pytest.approx([1.0, -1.0, 0.0, 0.6])
    assert result["zero_shot_auc"] == 1.0


# --- the command line answers --help without torch -----------------------------------------

HELP_RUN = """
import contextlib
import io
import json
import sys

from vlcd_dist.cli import main

out = io.StringIO()
code = None
with contextlib.redirect_stdout(out):
    try:
        main({argv!r})
    except SystemExit as exn:
        code = exn.code
print(json.dumps({{
    "code": code,
    "help": out.getvalue(),
    "loaded": sorted(m for m in ("torch", "accelerate", "deepspeed") if m in sys.modules),
}}))
"""


def _help(argv: list[str]) -> dict:
    return _python(HELP_RUN.format(argv=argv))


def test_top_level_help_lists_every_command_without_torch() -> None:
    result = _help(["--help"])
    assert result["code"] == 0 and result["loaded"] == []
    assert result["help"].startswith("usage: vlcd")
    for command in {c.split()[0] for c in COMMANDS}:
        assert command in result["help"], command


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_does_not_import_torch(command: str) -> None:
    result = _help([*command.split(), "--help"])
    assert result["code"] == 0 and result["loaded"] == [], result["loaded"]
    assert result["help"].startswith(f"usage: vlcd {command} "), result["help"][:200]


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    # argparse keeps its subcommands in a private action type; this is the only way to list them.
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix.strip()]
    return [
        leaf
        for name, child in subs[0].choices.items()
        for leaf in _leaf_commands(child, f"{prefix} {name}")
    ]


def test_every_command_is_checked() -> None:
    # A command added later is in COMMANDS too, or its --help goes unchecked.
    from vlcd_dist.cli import build_parser

    assert sorted(_leaf_commands(build_parser())) == sorted(COMMANDS)


# --- feature extraction on one rank --------------------------------------------------------


def test_features_of_one_rank_come_in_key_order() -> None:
    gen = torch.Generator().manual_seed(0)
    keys = [["s07", "s02", "s11"], ["s05", "s01"]]
    batches = [
        {
            "image": torch.randn(len(k), 3, 4, 4, generator=gen),
            "labels": torch.tensor([[i % 2, (i + 1) % 2] for i in range(len(k))]),
            "key": k,
            "study": [f"study-{key[1:]}" if key != "s11" else "study-02" for key in k],
        }
        for k in keys
    ]
    weight = torch.randn(48, 6, generator=gen)
    encoders = {
        "mean": (lambda x: x.mean(dim=(2, 3)), 3),
        "linear": (lambda x: x.flatten(1) @ weight, 6),
    }
    feats, labels, studies = extract_features(encoders, batches, num_tasks=2, device="cpu")

    # Directly: every sample on its own, then sorted by key_order of its key.
    flat_keys = [k for ks in keys for k in ks]
    images = torch.cat([b["image"] for b in batches])
    order = np.argsort([key_order(k) for k in flat_keys], kind="stable")
    assert list(order) != list(range(len(flat_keys)))  # the keys are not already in that order
    for name, (fn, d) in encoders.items():
        want = torch.cat([fn(images[i : i + 1]) for i in range(len(images))]).numpy()[order]
        assert feats[name].shape == (5, d) and feats[name].dtype == np.float32
        np.testing.assert_allclose(feats[name], want, rtol=1e-6, atol=1e-6)
    want_labels = torch.cat([b["labels"] for b in batches]).numpy()[order]
    np.testing.assert_array_equal(labels, want_labels)
    # Studies follow their rows; s02 and s11 share one, so they share a number.
    flat_studies = [s for b in batches for s in b["study"]]
    want_studies = np.array([key_order(s) for s in flat_studies])[order]
    np.testing.assert_array_equal(studies, want_studies)
    assert len(set(studies.tolist())) == 4


# --- the fast lane ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "accelerate.commands.launch", "--help"],
        [sys.executable, "-m", "torch.distributed.run", "--help"],
        [sys.executable, "-m", "vlcd_dist", "distill", "--help"],
    ],
)
def test_a_test_not_marked_multiproc_cannot_start_ranks(argv: list[str]) -> None:
    # conftest's guard refuses before anything starts, so `make test-fast` launches nothing.
    with pytest.raises(AssertionError, match="not marked multiproc"):
        subprocess.run(argv, capture_output=True, timeout=60)

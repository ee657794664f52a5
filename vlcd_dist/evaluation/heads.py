"""The probes ``vlcd eval`` fits, kept: one model's per-task heads on its raw embeddings.

A :class:`TaskHeads` is what EVAL/heads/<model>.json and <model>.safetensors hold (format
``vlcd-heads/1``), written by the eval stage and read by ``vlcd package`` and ``vlcd predict``.
On raw embeddings z [N, d] (numpy only; this module imports neither torch nor sklearn)::

    x = (l2_normalize(z) - scaler_mean) / scaler_scale     # [N, d]
    logit[:, t] = x @ weight[t] + bias[t]                  # [N, T]: the eval's probe scores
    probability = sigmoid(logit)                           # [N, T]; flag: >= the threshold
    zero_shot[:, t'] = cos(z, positive[t']) - cos(z, negative[t'])  # [N, T'] (with prompts)

A task whose train split has one class has weight row 0 and bias the logit of its train rate
(clipped to [1e-6, 1 - 1e-6]), C null and no threshold. Each task's operating point is chosen
on training data only (:func:`operating_point`): the largest threshold whose out-of-fold train
sensitivity reaches the target, on the out-of-fold probabilities of the C search's folds.

heads.safetensors (float32): scaler_mean [d], scaler_scale [d], weight [T, d], bias [T], and
with zero-shot prompts zero_shot_positive [T', d], zero_shot_negative [T', d] (each side's
prompts ensembled, unit length). heads.json::

    {"format": "vlcd-heads/1", "model": str, "embed_dim": d, "tasks": [T names],
     "probe": {"c": {task: C | null}, "cv_folds": k, "seed": s},
     "operating_points": {task: {"target_sensitivity": float, "threshold": float | null,
                                 "chosen_on": str,
                                 "train": {"sensitivity": float | null, "specificity": ...},
                                 "test": {"sensitivity": float | null, "specificity": ...}}},
     "zero_shot": null | {"tasks": [T' names],
                          "prompts": {task: {"positive": [str], "negative": [str]}}},
     "samples": {"train": N, "val": V, "test": M}}

A rate is null where its split has no sample of the class it counts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.metrics import l2_normalize
from vlcd_dist.evaluation.probes import LinearProbe
from vlcd_dist.evaluation.zeroshot import zero_shot_scores
from vlcd_dist.io import atomic_path, safetensors_problem, write_json

HEADS_FORMAT = "vlcd-heads/1"
CHOSEN_ON = "out-of-fold train probabilities"
CHOSEN_IN_SAMPLE = "in-sample train probabilities (one sample of a class: no folds)"
CHOSEN_NONE = "none (the train split has one class)"
DEFAULT_TARGET_SENSITIVITY = 0.9
HOW = "run `vlcd eval` again to write it (EVAL/heads/<model>.json)"


class HeadsError(VlcdError, ValueError):
    """A heads file that cannot be read: the message names the file and the field."""


@dataclass
class ZeroShotPrompts:
    """Prompt embeddings of the tasks that have zero-shot prompts (in shard task order)."""

    tasks: list[str]
    texts: dict[str, tuple[list[str], list[str]]]  # task -> (positive prompts, negative prompts)
    positive: np.ndarray  # [T', d]: each task's positive prompts ensembled
    negative: np.ndarray  # [T', d]: its negative prompts ensembled


@dataclass
class Rates:
    """Sensitivity and specificity of the flags ``probability >= threshold`` on one split;
    None where the split has no positive (sensitivity) or no negative (specificity)."""

    sensitivity: float | None
    specificity: float | None


@dataclass
class OperatingPoint:
    """One task's threshold on the probability, chosen on training data only."""

    target_sensitivity: float
    threshold: float | None
    """None when the train split has one class (no threshold can be chosen)."""
    chosen_on: str
    train: Rates
    """At the threshold, on the probabilities it was chosen on (out-of-fold, train split)."""
    test: Rates


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) elementwise, without overflow for large |x|: float64, same shape."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sensitivity_threshold(probabilities: np.ndarray, y: np.ndarray, target: float) -> float | None:
    """The largest threshold t whose sensitivity mean(probabilities[y == 1] >= t) is >= target.

    probabilities [N], y [N] (0/1), target in (0, 1]. It is one of the positives'
    probabilities (a larger t flags fewer positives); None when y has no positive."""
    positives = np.sort(np.asarray(probabilities, dtype=np.float64)[np.asarray(y) == 1])[::-1]
    n = len(positives)
    if n == 0:
        return None
    counts = np.arange(1, n + 1)
    k = int(counts[counts / n >= target][0])  # k = n always qualifies, as target <= 1
    return float(positives[k - 1])


def rates_at(probabilities: np.ndarray, y: np.ndarray, threshold: float | None) -> Rates:
    """Sensitivity and specificity of ``probabilities >= threshold`` against y [N] (0/1)."""
    if threshold is None:
        return Rates(None, None)
    flag = np.asarray(probabilities, dtype=np.float64) >= threshold
    y = np.asarray(y).astype(bool)
    sens = float(flag[y].mean()) if y.any() else None
    spec = float((~flag[~y]).mean()) if (~y).any() else None
    return Rates(sens, spec)


def operating_point(
    probe: LinearProbe,
    train_y: np.ndarray,
    test_scores: np.ndarray,
    test_y: np.ndarray,
    target: float,
) -> OperatingPoint:
    """The operating point of one fitted probe: the threshold of
    :func:`sensitivity_threshold` on the sigmoid of ``probe.train_scores`` (the out-of-fold
    decision values of the train split at the chosen C, :func:`~.probes.fit_probe`), with the
    rates it gives there and on the test split (test_scores [M]: the probe's decision values of
    the test features, test_y [M])."""
    if probe.train_scores is None:
        return OperatingPoint(target, None, CHOSEN_NONE, Rates(None, None), Rates(None, None))
    train_p = sigmoid(probe.train_scores)
    threshold = sensitivity_threshold(train_p, train_y, target)
    return OperatingPoint(
        target_sensitivity=float(target),
        threshold=threshold,
        chosen_on=CHOSEN_ON if probe.train_folds >= 2 else CHOSEN_IN_SAMPLE,
        train=rates_at(train_p, train_y, threshold),
        test=rates_at(sigmoid(test_scores), test_y, threshold),
    )


@dataclass
class TaskHeads:
    """One model's per-task probes and operating points, and its zero-shot prompt embeddings:
    everything heads.json and heads.safetensors hold (see the module docstring)."""

    model: str
    tasks: list[str]
    scaler_mean: np.ndarray  # [d]
    scaler_scale: np.ndarray  # [d]
    weight: np.ndarray  # [T, d]
    bias: np.ndarray  # [T]
    c: dict[str, float | None]
    cv_folds: int
    seed: int
    operating_points: dict[str, OperatingPoint]
    samples: dict[str, int]  # {"train": N (the probes' fit rows), "val": V, "test": M}
    prompts: ZeroShotPrompts | None = None

    @property
    def embed_dim(self) -> int:
        return int(self.scaler_mean.shape[0])

    # -- building --------------------------------------------------------------------------

    @classmethod
    def from_probes(
        cls,
        model: str,
        tasks: list[str],
        scaler: Any,
        probes: list[LinearProbe],
        train_y: np.ndarray,
        test_y: np.ndarray,
        test_scores: np.ndarray,
        *,
        cv_folds: int,
        seed: int,
        target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
        prompts: ZeroShotPrompts | None = None,
        val_samples: int = 0,
    ) -> TaskHeads:
        """The heads of a fitted sklearn StandardScaler (``mean_``, ``scale_`` [d]) and one
        :class:`~.probes.LinearProbe` per task, as the eval fits them; train_y [N, T] and
        test_y [M, T] labels, test_scores [M, T] the eval's scores of the test split
        (:func:`~.probes.apply_probes`), for the operating points."""
        d = int(np.shape(scaler.mean_)[0])
        rows = [p.linear(d) for p in probes]
        return cls(
            model=model,
            tasks=list(tasks),
            scaler_mean=np.asarray(scaler.mean_, dtype=np.float64),
            scaler_scale=np.asarray(scaler.scale_, dtype=np.float64),
            weight=np.stack([w for w, _ in rows]) if rows else np.zeros((0, d)),
            bias=np.array([b for _, b in rows], dtype=np.float64),
            c={
                t: None if math.isnan(p.c) else float(p.c)
                for t, p in zip(tasks, probes, strict=True)
            },
            cv_folds=int(cv_folds),
            seed=int(seed),
            operating_points={
                t: operating_point(
                    p, train_y[:, j], test_scores[:, j], test_y[:, j], target_sensitivity
                )
                for j, (t, p) in enumerate(zip(tasks, probes, strict=True))
            },
            samples={
                "train": int(len(train_y)),
                "val": int(val_samples),
                "test": int(len(test_y)),
            },
            prompts=prompts,
        )

    # -- applying (raw embeddings z [N, d]) ------------------------------------------------

    def standardise(self, z: np.ndarray) -> np.ndarray:
        """x [N, d] = (l2_normalize(z) - scaler_mean) / scaler_scale, float64."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.embed_dim:
            raise ValueError(
                f"heads of {self.model}: embeddings [N, {self.embed_dim}], got {list(z.shape)}"
            )
        mean = self.scaler_mean.astype(np.float64)
        return (l2_normalize(z) - mean) / self.scaler_scale.astype(np.float64)

    def logits(self, z: np.ndarray) -> np.ndarray:
        """Logits [N, T] of raw embeddings z [N, d]: the eval's probe scores."""
        return self.standardise(z) @ self.weight.astype(np.float64).T + self.bias

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        """sigmoid(logits) [N, T]; a task flags a sample when it is >= the task's threshold."""
        return sigmoid(self.logits(z))

    def zero_shot(self, z: np.ndarray) -> np.ndarray:
        """Zero-shot scores [N, T'] (cos to the positive prompts minus cos to the negative
        ones, :func:`~.zeroshot.zero_shot_scores`) of the tasks with prompts."""
        if self.prompts is None:
            raise ValueError(f"heads of {self.model}: no zero-shot prompts were evaluated")
        return zero_shot_scores(z, self.prompts.positive, self.prompts.negative)

    # -- files -----------------------------------------------------------------------------

    def tensors(self) -> dict[str, np.ndarray]:
        """What heads.safetensors holds: float32, C-contiguous."""
        out = {
            "scaler_mean": self.scaler_mean,
            "scaler_scale": self.scaler_scale,
            "weight": self.weight,
            "bias": self.bias,
        }
        if self.prompts is not None:
            out["zero_shot_positive"] = self.prompts.positive
            out["zero_shot_negative"] = self.prompts.negative
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}

    def to_json(self) -> dict[str, Any]:
        """What heads.json holds."""
        zero_shot = None
        if self.prompts is not None:
            zero_shot = {
                "tasks": list(self.prompts.tasks),
                "prompts": {
                    t: {"positive": list(pos), "negative": list(neg)}
                    for t, (pos, neg) in self.prompts.texts.items()
                },
            }
        return {
            "format": HEADS_FORMAT,
            "model": self.model,
            "embed_dim": self.embed_dim,
            "tasks": list(self.tasks),
            "probe": {"c": dict(self.c), "cv_folds": self.cv_folds, "seed": self.seed},
            "operating_points": {
                t: {
                    "target_sensitivity": op.target_sensitivity,
                    "threshold": op.threshold,
                    "chosen_on": op.chosen_on,
                    "train": vars(op.train).copy(),
                    "test": vars(op.test).copy(),
                }
                for t, op in self.operating_points.items()
            },
            "zero_shot": zero_shot,
            "samples": dict(self.samples),
        }

    def save(self, folder: str | Path, stem: str) -> Path:
        """Write ``folder/<stem>.safetensors`` then ``folder/<stem>.json``, each atomically.
        Returns the JSON's path (what :meth:`load` reads)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / f"{stem}.safetensors") as tmp:
            save_file(self.tensors(), str(tmp), metadata={"format": HEADS_FORMAT})
        path = folder / f"{stem}.json"
        write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, json_path: str | Path) -> TaskHeads:
        """The heads of ``<stem>.json`` and the ``<stem>.safetensors`` beside it. A file of
        another format, a missing or mistyped field, or a tensor of the wrong shape is refused
        with a :class:`HeadsError` naming the file and the field."""
        path = Path(json_path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exn:
            raise HeadsError(f"{path}: cannot read the heads JSON ({exn}); {HOW}") from exn
        found = data.get("format") if isinstance(data, dict) else None
        if found != HEADS_FORMAT:
            raise HeadsError(
                f'{path}: field "format" is {found!r}, expected {HEADS_FORMAT!r}: not a heads '
                f"file of this version; {HOW}"
            )
        f = _Fields(path)
        model = f.get(data, "model", str)
        d = f.get(data, "embed_dim", int)
        tasks = f.names(data, "tasks")
        probe = f.get(data, "probe", dict)
        c_of = f.get(probe, "c", dict, "probe.c")
        c = {t: f.number(c_of, t, f"probe.c.{t}", optional=True) for t in tasks}
        ops_of = f.get(data, "operating_points", dict)
        ops = {t: f.operating_point(ops_of, t) for t in tasks}
        samples_of = f.get(data, "samples", dict)
        # "val" came with the validation split; heads written before it held none.
        samples = {
            k: f.get(samples_of, k, int, f"samples.{k}")
            for k in ("train", "val", "test")
            if k != "val" or k in samples_of
        }
        zs = data.get("zero_shot")
        if zs is not None and not isinstance(zs, dict):
            raise HeadsError(f'{path}: field "zero_shot" must be null or an object; {HOW}')

        tensor_path = path.with_suffix(".safetensors")
        if not tensor_path.is_file():
            raise HeadsError(f"{tensor_path}: missing (the tensors of {path}); {HOW}")
        problem = safetensors_problem(tensor_path)
        if problem is not None:
            raise HeadsError(f"{tensor_path}: {problem}; {HOW}")
        from safetensors.numpy import load_file

        tensors = load_file(str(tensor_path))
        shapes = {
            "scaler_mean": (d,),
            "scaler_scale": (d,),
            "weight": (len(tasks), d),
            "bias": (len(tasks),),
        }
        prompts = None
        if zs is not None:
            zs_tasks = f.names(zs, "tasks", "zero_shot.tasks")
            texts_of = f.get(zs, "prompts", dict, "zero_shot.prompts")
            texts = {}
            for t in zs_tasks:
                side = f.get(texts_of, t, dict, f"zero_shot.prompts.{t}")
                texts[t] = tuple(
                    f.names(side, s, f"zero_shot.prompts.{t}.{s}") for s in ("positive", "negative")
                )
            shapes |= {
                "zero_shot_positive": (len(zs_tasks), d),
                "zero_shot_negative": (len(zs_tasks), d),
            }
        for name, shape in shapes.items():
            got = tensors.get(name)
            if got is None or tuple(got.shape) != shape:
                seen = "missing" if got is None else f"shape {list(got.shape)}"
                raise HeadsError(
                    f"{tensor_path}: tensor {name!r} is {seen}, expected {list(shape)} (from "
                    f"{path}: embed_dim {d}, {len(tasks)} tasks); {HOW}"
                )
        if zs is not None:
            prompts = ZeroShotPrompts(
                zs_tasks, texts, tensors["zero_shot_positive"], tensors["zero_shot_negative"]
            )
        return cls(
            model=model,
            tasks=tasks,
            scaler_mean=tensors["scaler_mean"],
            scaler_scale=tensors["scaler_scale"],
            weight=tensors["weight"],
            bias=tensors["bias"],
            c=c,
            cv_folds=f.get(probe, "cv_folds", int, "probe.cv_folds"),
            seed=f.get(probe, "seed", int, "probe.seed"),
            operating_points=ops,
            samples=samples,
            prompts=prompts,
        )


class _Fields:
    """Typed reads of heads.json fields; a bad one raises HeadsError naming file and field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def bad(self, where: str, expected: str, value: object) -> HeadsError:
        return HeadsError(f'{self.path}: field "{where}" is {value!r}, expected {expected}; {HOW}')

    def get(self, obj: dict, key: str, kind: type, where: str | None = None) -> Any:
        where = where or key
        if key not in obj:
            raise HeadsError(f'{self.path}: field "{where}" is missing; {HOW}')
        value = obj[key]
        # bool is an int to Python, never a count here.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.bad(where, f"a JSON {_JSON_NAMES[kind]}", value)
        return value

    def names(self, obj: dict, key: str, where: str | None = None) -> list[str]:
        value = self.get(obj, key, list, where)
        if not all(isinstance(v, str) for v in value):
            raise self.bad(where or key, "a list of strings", value)
        return list(value)

    def number(self, obj: dict, key: str, where: str, optional: bool = False) -> float | None:
        if key not in obj:
            raise HeadsError(f'{self.path}: field "{where}" is missing; {HOW}')
        value = obj[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(where, "a number" + (" or null" if optional else ""), value)
        return float(value)

    def operating_point(self, ops: dict, task: str) -> OperatingPoint:
        where = f"operating_points.{task}"
        op = self.get(ops, task, dict, where)
        rates = {}
        for split in ("train", "test"):
            r = self.get(op, split, dict, f"{where}.{split}")
            rates[split] = Rates(
                *(
                    self.number(r, k, f"{where}.{split}.{k}", optional=True)
                    for k in ("sensitivity", "specificity")
                )
            )
        return OperatingPoint(
            target_sensitivity=self.number(op, "target_sensitivity", f"{where}.target_sensitivity"),
            threshold=self.number(op, "threshold", f"{where}.threshold", optional=True),
            chosen_on=self.get(op, "chosen_on", str, f"{where}.chosen_on"),
            train=rates["train"],
            test=rates["test"],
        )


_JSON_NAMES = {str: "string", int: "integer", dict: "object", list: "array"}

"""The evaluation report: what ``vlcd eval`` measured, as typed data, and its file report.json.

This module is the only reader and writer of report.json: the eval stage builds an
:class:`EvalReport` and saves it; the reporting pages, the demo and the sweep load it. The
file carries a format name and a version, so a file from another version is refused with a
message naming it instead of being half-understood.

Shapes of the JSON (``NaN`` stands for an AUC that is undefined, e.g. a task without positive
test samples)::

    {"format": "vlcd-eval-report", "version": 4,
     "tasks": [task, ...],
     "samples": {"train": int, "val": int, "test": int},
     "image_size": [h, w],
     "latency": {"batch": int, "threads": int, "device": "cpu", "precisions": [str, ...]},
     "bootstrap": {"resamples": int, "confidence": float},
     "models": {name: {"kind": "teacher" | "student", "arch": str, "weights": str | null,
                       "stage": str | null, "step": int | null, "init_from": str | null,
                       "auc": {task: float}, "auc_mean": float,
                       "ci": {"mean": [lo, hi] | null, task: [lo, hi] | null, ...},
                       "probe_c": {task: float}, "params": int,
                       "latency_ms": {precision: float}, "speedup": {precision: float},
                       "resizes_to": [h, w] | null,
                       "val_auc": {task: float}, "val_auc_mean": float | null,
                       "vs_teacher": {task | "mean": {"delta": float, "ci": [lo, hi] | null}},
                       "roc": {task: {"fpr": [float], "tpr": [float]}}}},
     "degrade": null | {"corruptions": [name, ...], "severities": [int, ...], "seed": int,
                        "models": {model: {corruption: {"<severity>": {
                            "auc": {task: float}, "auc_mean": float, "drop": float,
                            "zero_shot": null | {"auc": {task: float}, "auc_mean": float}}}}}},
     "zero_shot": null | {"tasks": [task, ...],
                          "prompts": {task: {"positive": [str, ...], "negative": [str, ...]}},
                          "models": {model: {"auc": {task: float}, "auc_mean": float}}}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlcd_dist.errors import VlcdError
from vlcd_dist.io import write_json

FORMAT = "vlcd-eval-report"
VERSION = 4
"""Version 1 (no ``format`` field) had no ROC points and two spellings of the corruption;
version 2 had one latency per model (the teacher's timed in its own autocast precision) and
one zero-shot prompt per side (``"prompts": {task: [positive, negative]}``); version 3 had no
validation split (probes fitted on the whole train split), percentile intervals, and the
student-minus-teacher mean AUC without a paired interval (``delta_vs_teacher``)."""

Interval = tuple[float, float]


@dataclass
class Roc:
    """One ROC curve: false and true positive rates at each threshold, both [K] in [0, 1]."""

    fpr: list[float]
    tpr: list[float]


@dataclass
class Paired:
    """A student's test AUC minus the teacher's, on one task or their mean, with the paired
    bootstrap interval of that difference (both models scored on the same resampled rows)."""

    delta: float
    ci: Interval | None = None
    """None without a bootstrap (eval.bootstrap 0)."""

    @property
    def matches(self) -> bool | None:
        """The student matches the teacher: the interval contains 0 or lies above it (its upper
        end is >= 0). None without an interval."""
        if self.ci is None or not all(math.isfinite(v) for v in self.ci):
            return None
        return self.ci[1] >= 0


@dataclass
class ModelResult:
    """One evaluated image encoder: its linear-probe AUCs, interval, size and CPU latency."""

    kind: str
    """"teacher" (its image tower) or "student"."""
    arch: str
    auc: dict[str, float]
    """Test AUC-ROC per task (NaN when the test split has one class only)."""
    auc_mean: float
    """Mean of the finite per-task AUCs."""
    ci: dict[str, Interval | None]
    """Bootstrap interval of the mean ("mean") and of each task; None without a bootstrap."""
    probe_c: dict[str, float]
    """Inverse regularisation strength picked by cross-validation, per task."""
    params: int
    latency_ms: dict[str, float]
    """{precision: median CPU forward time of one batch}, every model timed in each precision
    alike (see :attr:`EvalReport.latency`)."""
    roc: dict[str, Roc]
    """The probes' ROC curve per task on the test split."""
    speedup: dict[str, float] = field(default_factory=dict)
    """{precision: the teacher's latency over this model's, both in that precision}; empty when
    the teacher was not evaluated."""
    resizes_to: tuple[int, int] | None = None
    """(H, W) the model resizes its input to inside (a student trained at another size than
    :attr:`EvalReport.image_size`; its latency includes the resize); None: it runs as fed."""
    val_auc: dict[str, float] = field(default_factory=dict)
    """Validation AUC-ROC per task: the probes (fitted on the rest of the train split) on the
    validation rows carved from it by study; empty without a validation split."""
    val_auc_mean: float | None = None
    """Mean of the finite validation AUCs: what choices between runs (a sweep's winner) are
    made on; None without a validation split."""
    vs_teacher: dict[str, Paired] = field(default_factory=dict)
    """{task and "mean": this student's test AUC minus the teacher's, with a paired interval};
    empty for the teacher and when the teacher was not evaluated."""
    weights: str | None = None
    """The file the weights came from (the teacher's checkpoint, the exported student)."""
    stage: str | None = None
    step: int | None = None
    init_from: str | None = None

    @property
    def delta_vs_teacher(self) -> float | None:
        """auc_mean minus the teacher's; None for the teacher and without one."""
        paired = self.vs_teacher.get("mean")
        return None if paired is None else paired.delta


@dataclass
class ZeroShotResult:
    """Zero-shot test AUC-ROC per prompted task and their mean."""

    auc: dict[str, float]
    auc_mean: float


@dataclass
class DegradedResult:
    """One model on the test split under one corruption at one severity, scored by the probes
    fitted on clean features."""

    auc: dict[str, float]
    auc_mean: float
    drop: float
    """auc_mean minus the clean auc_mean: negative when the corruption hurts."""
    zero_shot: ZeroShotResult | None = None


@dataclass
class Degrade:
    """The robustness study: every model under every (corruption, severity)."""

    corruptions: list[str]
    severities: list[int]
    seed: int
    models: dict[str, dict[str, dict[int, DegradedResult]]]
    """model -> corruption -> severity -> result."""

    def description(self) -> str:
        """E.g. "tablet_camera at severities 1, 3" (severity 0, the identity, left out)."""
        severities = ", ".join(str(s) for s in self.severities if s != 0) or "0"
        return f"{', '.join(self.corruptions)} at severities {severities}"


@dataclass
class ZeroShot:
    """Zero-shot scoring with the teacher's text tower: the prompts and each model's AUCs."""

    tasks: list[str]
    prompts: dict[str, tuple[list[str], list[str]]]
    """task -> (positive prompts, negative prompts); each side's embeddings were ensembled."""
    models: dict[str, ZeroShotResult]


@dataclass
class Samples:
    train: int
    """Rows the probes were fitted on (the train split less the validation rows)."""
    val: int
    """Validation rows, carved from the train split by study (eval.val_fraction)."""
    test: int


@dataclass
class LatencySetup:
    batch: int
    threads: int
    device: str = "cpu"
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    """The precisions every model was timed in; the first is the one figures plot."""


@dataclass
class BootstrapSetup:
    resamples: int
    """0: no intervals."""
    confidence: float


@dataclass
class EvalReport:
    """Everything ``vlcd eval`` measured; :meth:`save` / :meth:`load` are report.json's only
    writer and reader."""

    tasks: list[str]
    samples: Samples
    image_size: tuple[int, int]
    latency: LatencySetup
    bootstrap: BootstrapSetup
    models: dict[str, ModelResult]
    """In evaluation order: the teacher first when evaluated, then the students."""
    degrade: Degrade | None = None
    zero_shot: ZeroShot | None = None

    # -- derived values ------------------------------------------------------------------------

    def robustness_curves(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """{corruption: {model: [(severity, mean AUC), ...]}} sorted by severity, with the clean
        mean AUC as severity 0 when severity 0 was not evaluated."""
        out: dict[str, dict[str, list[tuple[int, float]]]] = {}
        if self.degrade is None:
            return out
        for corruption in self.degrade.corruptions:
            for name, r in self.models.items():
                by_severity = self.degrade.models.get(name, {}).get(corruption, {})
                points = {s: d.auc_mean for s, d in by_severity.items()}
                points.setdefault(0, r.auc_mean)
                out.setdefault(corruption, {})[name] = sorted(points.items())
        return out

    def degraded_mean(self, model: str) -> float | None:
        """Mean AUC of ``model`` averaged over every corruption and severity of the robustness
        study (severity 0, the identity, left out); None without one."""
        if self.degrade is None:
            return None
        values = [
            d.auc_mean
            for by_severity in self.degrade.models.get(model, {}).values()
            for s, d in by_severity.items()
            if s != 0 and math.isfinite(d.auc_mean)
        ]
        return sum(values) / len(values) if values else None

    # -- report.json ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        models = {}
        for name, r in self.models.items():
            models[name] = {
                "kind": r.kind,
                "arch": r.arch,
                "weights": r.weights,
                "stage": r.stage,
                "step": r.step,
                "init_from": r.init_from,
                "auc": r.auc,
                "auc_mean": r.auc_mean,
                "ci": {k: list(v) if v is not None else None for k, v in r.ci.items()},
                "probe_c": r.probe_c,
                "params": r.params,
                "latency_ms": r.latency_ms,
                "speedup": r.speedup,
                "resizes_to": list(r.resizes_to) if r.resizes_to else None,
                "val_auc": r.val_auc,
                "val_auc_mean": r.val_auc_mean,
                "vs_teacher": {
                    k: {"delta": p.delta, "ci": list(p.ci) if p.ci else None}
                    for k, p in r.vs_teacher.items()
                },
                "roc": {t: {"fpr": c.fpr, "tpr": c.tpr} for t, c in r.roc.items()},
            }
        degrade = None
        if self.degrade is not None:
            d = self.degrade
            degrade = {
                "corruptions": d.corruptions,
                "severities": d.severities,
                "seed": d.seed,
                # JSON keys are strings: severity 5 is stored as "5".
                "models": {
                    m: {
                        c: {str(s): _degraded_json(e) for s, e in by_s.items()}
                        for c, by_s in by_c.items()
                    }
                    for m, by_c in d.models.items()
                },
            }
        zero_shot = None
        if self.zero_shot is not None:
            z = self.zero_shot
            zero_shot = {
                "tasks": z.tasks,
                "prompts": {
                    t: {"positive": list(pos), "negative": list(neg)}
                    for t, (pos, neg) in z.prompts.items()
                },
                "models": {m: _zero_shot_json(r) for m, r in z.models.items()},
            }
        return {
            "format": FORMAT,
            "version": VERSION,
            "tasks": self.tasks,
            "samples": {
                "train": self.samples.train,
                "val": self.samples.val,
                "test": self.samples.test,
            },
            "image_size": list(self.image_size),
            "latency": {
                "batch": self.latency.batch,
                "threads": self.latency.threads,
                "device": self.latency.device,
                "precisions": self.latency.precisions,
            },
            "bootstrap": {
                "resamples": self.bootstrap.resamples,
                "confidence": self.bootstrap.confidence,
            },
            "models": models,
            "degrade": degrade,
            "zero_shot": zero_shot,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalReport:
        """The report of :meth:`to_json`'s output; KeyError/TypeError/ValueError when a field
        is missing or malformed (:meth:`load` turns them into a message naming the file)."""
        models = {}
        for name, r in data["models"].items():
            models[name] = ModelResult(
                kind=str(r["kind"]),
                arch=str(r["arch"]),
                weights=r["weights"],
                stage=r["stage"],
                step=r["step"],
                init_from=r["init_from"],
                auc=_floats(r["auc"]),
                auc_mean=float(r["auc_mean"]),
                ci={k: _interval(v) for k, v in r["ci"].items()},
                probe_c=_floats(r["probe_c"]),
                params=int(r["params"]),
                latency_ms=_floats(r["latency_ms"]),
                speedup=_floats(r["speedup"]),
                resizes_to=_size(r["resizes_to"]),
                val_auc=_floats(r["val_auc"]),
                val_auc_mean=_optional_float(r["val_auc_mean"]),
                vs_teacher={
                    k: Paired(float(p["delta"]), _interval(p["ci"]))
                    for k, p in r["vs_teacher"].items()
                },
                roc={
                    t: Roc([float(v) for v in c["fpr"]], [float(v) for v in c["tpr"]])
                    for t, c in r["roc"].items()
                },
            )
        degrade = None
        if data["degrade"] is not None:
            d = data["degrade"]
            degrade = Degrade(
                corruptions=[str(c) for c in d["corruptions"]],
                severities=[int(s) for s in d["severities"]],
                seed=int(d["seed"]),
                models={
                    m: {
                        c: {int(s): _degraded(e) for s, e in by_s.items()}
                        for c, by_s in by_c.items()
                    }
                    for m, by_c in d["models"].items()
                },
            )
        zero_shot = None
        if data["zero_shot"] is not None:
            z = data["zero_shot"]
            zero_shot = ZeroShot(
                tasks=[str(t) for t in z["tasks"]],
                prompts={t: _prompts(p) for t, p in z["prompts"].items()},
                models={m: _zero_shot(r) for m, r in z["models"].items()},
            )
        h, w = data["image_size"]
        return cls(
            tasks=[str(t) for t in data["tasks"]],
            samples=Samples(
                int(data["samples"]["train"]),
                int(data["samples"]["val"]),
                int(data["samples"]["test"]),
            ),
            image_size=(int(h), int(w)),
            latency=LatencySetup(
                int(data["latency"]["batch"]),
                int(data["latency"]["threads"]),
                str(data["latency"]["device"]),
                [str(p) for p in data["latency"]["precisions"]],
            ),
            bootstrap=BootstrapSetup(
                int(data["bootstrap"]["resamples"]), float(data["bootstrap"]["confidence"])
            ),
            models=models,
            degrade=degrade,
            zero_shot=zero_shot,
        )

    def save(self, path: str | Path) -> Path:
        """Write report.json atomically (a finished eval is recognised by this file)."""
        path = Path(path)
        write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """Read a report.json; VlcdError naming the file when it is not one this version of
        ``vlcd eval`` writes."""
        path = Path(path)
        rerun = (
            f"rerun the eval (`vlcd eval --config RECIPE --out {path.parent}`, or the demo or "
            "sweep that made it) to rewrite it"
        )
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exn:
            raise VlcdError(f"{path}: cannot read the eval report ({exn}); {rerun}") from exn
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VlcdError(
                f"{path}: not an eval report of this version (no format {FORMAT!r}; an older "
                f"vlcd eval wrote it without ROC points); {rerun}"
            )
        if data.get("version") != VERSION:
            raise VlcdError(
                f"{path}: eval report version {data.get('version')!r}, this vlcd reads version "
                f"{VERSION}; {rerun}"
            )
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as exn:
            raise VlcdError(f"{path}: malformed eval report ({exn!r}); {rerun}") from exn


def _floats(values: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in values.items()}


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    h, w = value
    return int(h), int(w)


def _interval(value: Any) -> Interval | None:
    if value is None:
        return None
    lo, hi = value
    return float(lo), float(hi)


def _prompts(value: Any) -> tuple[list[str], list[str]]:
    """A task's prompts: {"positive": [...], "negative": [...]}."""
    return [str(p) for p in value["positive"]], [str(p) for p in value["negative"]]


def _zero_shot_json(r: ZeroShotResult) -> dict[str, Any]:
    return {"auc": r.auc, "auc_mean": r.auc_mean}


def _zero_shot(data: dict[str, Any]) -> ZeroShotResult:
    return ZeroShotResult(_floats(data["auc"]), float(data["auc_mean"]))


def _degraded_json(e: DegradedResult) -> dict[str, Any]:
    return {
        "auc": e.auc,
        "auc_mean": e.auc_mean,
        "drop": e.drop,
        "zero_shot": _zero_shot_json(e.zero_shot) if e.zero_shot is not None else None,
    }


def _degraded(data: dict[str, Any]) -> DegradedResult:
    zs = data["zero_shot"]
    return DegradedResult(
        auc=_floats(data["auc"]),
        auc_mean=float(data["auc_mean"]),
        drop=float(data["drop"]),
        zero_shot=_zero_shot(zs) if zs is not None else None,
    )

"""The deployment record: what ``vlcd package`` measured of every packaged model, as typed data,
and its file DIR/deployment.json.

``vlcd package`` builds a :class:`DeploymentReport` and saves it; ``vlcd report`` loads it for
its deployment section. This module imports neither torch nor onnxruntime. Shape of the JSON
(``NaN`` stands for an AUC that is undefined, e.g. a task without positive test samples)::

    {"format": "vlcd-deployment/1",
     "run": str,                                   # the RUN path as given to vlcd package
     "tasks": [task, ...], "zero_shot_tasks": [task, ...],
     "image_size": [h, w], "test_samples": int,
     "bootstrap": {"resamples": int, "confidence": float},
     "latency": {"batch": int, "threads": [int, ...], "iters": int, "cpu": str, "cores": int},
     "models": {name: {
         "kind": "student" | "teacher", "arch": str, "params": int, "folder": str,
         "size_bytes": {"pytorch": int, "onnx_fp32": int, "onnx_int8": int},
         "auc": {"eval" | "fp32" | "int8": {task: float, ..., "mean": float}},
         "ci": {"fp32" | "int8": {task: [lo, hi] | null, ..., "mean": [lo, hi] | null}},
         "latency_ms": {"<threads>": {"eager": ms, "onnx_fp32": ms, "onnx_int8": ms}},
         "verify": {"fp32_max_diff": float, "int8_max_probability_diff": float,
                    "int8_min_embedding_cosine": float},
         "timm": {"plain": bool, "note": str}}}}

"auc.eval" holds the eval's report.json figures; "fp32" and "int8" the package's ONNX models
scoring the test split through the eval's probes. Unknown keys are ignored on reading.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.results import BootstrapSetup, Interval
from vlcd_dist.io import json_problem, write_json

FORMAT = "vlcd-deployment/1"
FILE_NAME = "deployment.json"

RUNTIMES = ("eager", "onnx_fp32", "onnx_int8")
"""The runtimes timed side by side: PyTorch eager, ONNX Runtime on model.onnx and on
model.int8.onnx (the keys of each thread count's latencies)."""
SIZE_KEYS = ("pytorch", "onnx_fp32", "onnx_int8")
"""The files measured on disk: model.safetensors, model.onnx, model.int8.onnx."""
MEAN = "mean"
"""The key of the mean over tasks, beside the tasks' own keys in each AUC and interval map."""


class DeploymentRecordError(VlcdError):
    """A deployment.json that is missing, of another format, or lacking a field."""


@dataclass
class LatencySetup:
    """How every model was timed: ``iters`` forward passes of a batch of ``batch`` images at
    each thread count, on one CPU, all runtimes in the same run."""

    batch: int
    threads: list[int]
    iters: int
    cpu: str
    """The CPU's model name."""
    cores: int


@dataclass
class SizeOnDisk:
    """Bytes of the model's weights in each format."""

    pytorch: int
    """model.safetensors (timm's pretrained format)."""
    onnx_fp32: int
    onnx_int8: int


@dataclass
class Aucs:
    """Test AUC-ROC per task plus ``"mean"`` (the mean of the finite task AUCs), each source a
    {key: float} map with the tasks of :attr:`DeploymentReport.tasks` and ``"mean"``."""

    eval: dict[str, float]
    """The eval's report.json figures (the PyTorch features)."""
    fp32: dict[str, float]
    """The ONNX fp32 model on the test split."""
    int8: dict[str, float]
    """The ONNX int8 model on the test split."""


@dataclass
class Intervals:
    """Bootstrap intervals of :class:`Aucs` fp32 and int8 ({task or "mean": (lo, hi) or None};
    None where the bootstrap was off or the AUC is undefined)."""

    fp32: dict[str, Interval | None]
    int8: dict[str, Interval | None]


@dataclass
class Verification:
    """The ONNX models against PyTorch on sample images."""

    fp32_max_diff: float
    """Largest difference of any fp32 ONNX output from PyTorch's, relative to max(1, the
    largest |PyTorch output|) of that output."""
    int8_max_probability_diff: float
    int8_min_embedding_cosine: float


@dataclass
class TimmCheck:
    plain: bool
    """True when ``timm.create_model`` rebuilds the tower from the package alone."""
    note: str


@dataclass
class DeployedModel:
    """One packaged model: its size on disk, AUCs with intervals, latencies and checks."""

    kind: str
    """"student" or "teacher" (its image tower)."""
    arch: str
    params: int
    folder: str
    """Its folder inside the package DIR."""
    size_bytes: SizeOnDisk
    auc: Aucs
    ci: Intervals
    latency_ms: dict[int, dict[str, float]]
    """{threads: {runtime: ms}} for each thread count of :attr:`LatencySetup.threads` and each
    runtime of :data:`RUNTIMES`."""
    verify: Verification
    timm: TimmCheck

    def int8_change(self, key: str = MEAN) -> float:
        """int8 AUC minus fp32 AUC of a task or the mean (negative: int8 loses AUC)."""
        return self.auc.int8[key] - self.auc.fp32[key]


@dataclass
class DeploymentReport:
    """Everything ``vlcd package`` measured; :meth:`save` / :meth:`load` are deployment.json's
    only writer and reader."""

    run: str
    tasks: list[str]
    zero_shot_tasks: list[str]
    image_size: tuple[int, int]
    """(H, W) of the models' input."""
    test_samples: int
    bootstrap: BootstrapSetup
    latency: LatencySetup
    models: dict[str, DeployedModel]

    def ordered(self) -> list[tuple[str, DeployedModel]]:
        """The students in record order, then the teacher (the reference) and any other kind."""
        students = [(n, m) for n, m in self.models.items() if m.kind == "student"]
        return students + [(n, m) for n, m in self.models.items() if m.kind != "student"]

    # -- deployment.json -----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        models = {}
        for name, m in self.models.items():
            models[name] = {
                "kind": m.kind,
                "arch": m.arch,
                "params": m.params,
                "folder": m.folder,
                "size_bytes": asdict(m.size_bytes),
                "auc": {"eval": m.auc.eval, "fp32": m.auc.fp32, "int8": m.auc.int8},
                "ci": {
                    p: {k: list(v) if v is not None else None for k, v in getattr(m.ci, p).items()}
                    for p in ("fp32", "int8")
                },
                "latency_ms": {str(t): dict(by) for t, by in m.latency_ms.items()},
                "verify": asdict(m.verify),
                "timm": asdict(m.timm),
            }
        return {
            "format": FORMAT,
            "run": self.run,
            "tasks": self.tasks,
            "zero_shot_tasks": self.zero_shot_tasks,
            "image_size": list(self.image_size),
            "test_samples": self.test_samples,
            "bootstrap": {
                "resamples": self.bootstrap.resamples,
                "confidence": self.bootstrap.confidence,
            },
            "latency": asdict(self.latency),
            "models": models,
        }

    @classmethod
    def from_json(cls, data: Any) -> DeploymentReport:
        """The record of :meth:`to_json`'s output; :class:`FieldProblem` naming the field (e.g.
        ``models.teacher.auc.int8.fir``) when one is missing or of the wrong type. Every task of
        ``tasks`` and ``"mean"`` must be in each AUC and interval map, every thread count of
        ``latency.threads`` in each model's latencies."""
        top = _Obj(data, "")
        tasks = top.strings("tasks")
        keys = [*tasks, MEAN]
        boot, lat = top.obj("bootstrap"), top.obj("latency")
        latency = LatencySetup(
            batch=lat.integer("batch"),
            threads=lat.integers("threads"),
            iters=lat.integer("iters"),
            cpu=lat.text("cpu"),
            cores=lat.integer("cores"),
        )
        size = top.integers("image_size")
        if len(size) != 2:
            raise FieldProblem("image_size", f"holds {len(size)} numbers, not [height, width]")
        all_models = top.obj("models")
        models = {}
        for name in all_models.keys():
            m = all_models.obj(name)
            auc, ci, by_threads = m.obj("auc"), m.obj("ci"), m.obj("latency_ms")
            sizes, verify, timm = m.obj("size_bytes"), m.obj("verify"), m.obj("timm")
            models[name] = DeployedModel(
                kind=m.text("kind"),
                arch=m.text("arch"),
                params=m.integer("params"),
                folder=m.text("folder"),
                size_bytes=SizeOnDisk(*(sizes.integer(k) for k in SIZE_KEYS)),
                auc=Aucs(
                    eval=auc.obj("eval").numbers(keys),
                    fp32=auc.obj("fp32").numbers(keys),
                    int8=auc.obj("int8").numbers(keys),
                ),
                ci=Intervals(
                    fp32=ci.obj("fp32").intervals(keys), int8=ci.obj("int8").intervals(keys)
                ),
                latency_ms={t: by_threads.obj(str(t)).numbers(RUNTIMES) for t in latency.threads},
                verify=Verification(
                    verify.number("fp32_max_diff"),
                    verify.number("int8_max_probability_diff"),
                    verify.number("int8_min_embedding_cosine"),
                ),
                timm=TimmCheck(timm.flag("plain"), timm.text("note")),
            )
        return cls(
            run=top.text("run"),
            tasks=tasks,
            zero_shot_tasks=top.strings("zero_shot_tasks"),
            image_size=(size[0], size[1]),
            test_samples=top.integer("test_samples"),
            bootstrap=BootstrapSetup(boot.integer("resamples"), boot.number("confidence")),
            latency=latency,
            models=models,
        )

    def save(self, path: str | Path) -> Path:
        """Write deployment.json atomically."""
        path = Path(path)
        write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> DeploymentReport:
        """Read a deployment.json; :class:`DeploymentRecordError` naming the file (and the
        field) when it is missing, unreadable, of another format or lacks a field."""
        path = Path(path)
        rerun = f"rerun `vlcd package RUN --out {path.parent}` to rewrite it"
        if not path.is_file():
            raise DeploymentRecordError(
                f"{path}: no deployment record here; `vlcd package RUN --out {path.parent}` "
                "writes it (after `vlcd eval`)"
            )
        problem = json_problem(path)
        if problem is not None:
            raise DeploymentRecordError(f"{path}: {problem}; {rerun}")
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("run"), str):
            rerun = rerun.replace("RUN", data["run"], 1)
        found = data.get("format") if isinstance(data, dict) else None
        if found != FORMAT:
            what = "no format field" if found is None else f"format {found!r}"
            raise DeploymentRecordError(
                f"{path}: not a deployment record this vlcd reads ({what}; expected {FORMAT!r}); "
                f"{rerun}"
            )
        try:
            return cls.from_json(data)
        except FieldProblem as exn:
            message = f"{path}: field {exn.field} {exn.problem}; {rerun}"
            raise DeploymentRecordError(message) from exn


class FieldProblem(ValueError):
    """A field of a JSON record is missing or of the wrong type; ``field`` is its dotted path
    (``models.teacher.size_bytes.onnx_int8``, ``latency.threads[1]``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


class _Obj:
    """A JSON object read field by field, each problem named by its dotted path."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise FieldProblem(where or "the top level", f"is {_kind(value)}, not an object")
        self.value = value
        self.where = where

    def at(self, key: str, index: int | None = None) -> str:
        """The dotted path of a field (and of one item of a list field)."""
        path = f"{self.where}.{key}" if self.where else key
        return path if index is None else f"{path}[{index}]"

    def get(self, key: str) -> Any:
        if key not in self.value:
            raise FieldProblem(self.at(key), "is missing")
        return self.value[key]

    def keys(self) -> list[str]:
        return list(self.value)

    def obj(self, key: str) -> _Obj:
        return _Obj(self.get(key), self.at(key))

    def array(self, key: str) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list):
            raise FieldProblem(self.at(key), f"is {_kind(value)}, not a list")
        return value

    def strings(self, key: str) -> list[str]:
        return [_text(v, self.at(key, i)) for i, v in enumerate(self.array(key))]

    def integers(self, key: str) -> list[int]:
        return [_integer(v, self.at(key, i)) for i, v in enumerate(self.array(key))]

    def text(self, key: str) -> str:
        return _text(self.get(key), self.at(key))

    def integer(self, key: str) -> int:
        return _integer(self.get(key), self.at(key))

    def number(self, key: str) -> float:
        return _number(self.get(key), self.at(key))

    def numbers(self, keys: Sequence[str]) -> dict[str, float]:
        """{key: number} for each of ``keys`` (others in the object are ignored)."""
        return {k: self.number(k) for k in keys}

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise FieldProblem(self.at(key), f"is {_kind(value)}, not true or false")
        return value

    def intervals(self, keys: Sequence[str]) -> dict[str, Interval | None]:
        """{key: (low, high) or None (null)} for each of ``keys``."""
        out: dict[str, Interval | None] = {}
        for k in keys:
            value = self.get(k)
            if value is not None and (not isinstance(value, list) or len(value) != 2):
                raise FieldProblem(self.at(k), f"is {_kind(value)}, not [low, high] or null")
            out[k] = (
                None
                if value is None
                else (_number(value[0], self.at(k, 0)), _number(value[1], self.at(k, 1)))
            )
        return out


def _kind(value: Any) -> str:
    """A JSON value as an error message shows it: its type and its start."""
    return "null" if value is None else f"{type(value).__name__} {json.dumps(value)[:40]}"


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FieldProblem(where, f"is {_kind(value)}, not a string")
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldProblem(where, f"is {_kind(value)}, not a whole number")
    return value


def _number(value: Any, where: str) -> float:
    """A number; NaN (an undefined AUC) passes, as json writes and reads it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldProblem(where, f"is {_kind(value)}, not a number")
    return float(value)

"""``vlcd package RUN --out DIR``: every evaluated model as a self-contained analyser.

Per model (each student, and the teacher for comparison) one folder ``DIR/<model>/``:

- ``model.safetensors`` + ``config.json``: the image tower in timm's pretrained format (the
  projection is the classifier, ``num_classes`` = d; EfficientFormer's two heads both hold it, so
  their eval-mode average is the projection), checked by rebuilding it with plain timm
  (``timm.create_model("local-dir:<folder>", pretrained=True)``) and comparing features;
- ``heads.json`` + ``heads.safetensors``: the eval's probes, operating points and zero-shot prompt
  embeddings (:mod:`vlcd_dist.evaluation.heads`, copied as the eval wrote them);
- ``model.onnx`` (images -> embedding, logits, probabilities, zero-shot scores; fp32) and
  ``model.int8.onnx`` (ONNX Runtime static quantization of the image tower, QDQ, per-channel int8
  weights, calibrated on training images; the probe head stays fp32), each compared with
  PyTorch on training images;
- ``package.json`` (what ``vlcd predict`` reads) and ``README.md``, the model card.

Both ONNX models score the test split (AUC per task with bootstrap intervals, as the eval does)
and every model is timed at batch 1 with 1 and 4 threads as eager PyTorch, ONNX fp32 and ONNX
int8, side by side in one run. ``DIR/deployment.json`` (:mod:`.record`) holds those figures for
the report's deployment section. A model folder is written under a temporary name and renamed
when complete, so an interrupted run leaves no half package.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import json
import logging
import shutil
import statistics
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlcd_dist.config import TrainConfig, load_config
from vlcd_dist.data.stream import ShardLoader
from vlcd_dist.deploy.export import (
    INPUT_NAME,
    Stats,
    _need,
    export_onnx,
    file_sha256,
    preprocessing,
)
from vlcd_dist.deploy.predict import PACKAGE_FORMAT, open_session
from vlcd_dist.deploy.record import FILE_NAME as DEPLOYMENT_FILE
from vlcd_dist.deploy.record import FORMAT as DEPLOYMENT_FORMAT
from vlcd_dist.deploy.record import DeploymentReport
from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.efficiency import available_cores, cpu_model, round_robin, time_call
from vlcd_dist.evaluation.features import key_order
from vlcd_dist.evaluation.metrics import aucs_by_task, bootstrap_intervals, mean_finite
from vlcd_dist.evaluation.results import EvalReport
from vlcd_dist.io import save_tensors, write_json

logger = logging.getLogger("vlcd_dist.package")

OUTPUTS = ("embedding", "logits", "probabilities", "zero_shot")
FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
TIMM_WEIGHTS, TIMM_CONFIG = "model.safetensors", "config.json"
HEADS_STEM = "heads"
INT8_COSINE_WARN = 0.9
"""Below this embedding cosine to fp32 on a test image, packaging warns about the int8 model."""
ENCODER_SCOPE = "encoder"
"""The ONNX node-name scope of the image tower: the int8 model quantizes only these nodes."""


# ---------------------------------------------------------------------------------------------
# The deployed model: image tower + probes + zero-shot prompts as one module


class ProbeHead(nn.Module):
    """The eval's probes and zero-shot prompts on raw embeddings z [B, d].

    x = (z / |z| - scaler_mean) / scaler_scale; logits = x W^T + b [B, T]; probabilities =
    sigmoid(logits); zero_shot = cos(z, positive) - cos(z, negative) [B, T'] (T' = 0: none)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name in ("scaler_mean", "scaler_scale", "weight", "bias"):
            self.register_buffer(name, tensors[name].float().clone())
        d = self.weight.shape[1]
        pos = tensors.get("zero_shot_positive", torch.zeros(0, d))
        neg = tensors.get("zero_shot_negative", torch.zeros(0, d))
        self.register_buffer("zero_shot_positive", F.normalize(pos.float(), dim=1))
        self.register_buffer("zero_shot_negative", F.normalize(neg.float(), dim=1))

    @property
    def has_zero_shot(self) -> bool:
        return self.zero_shot_positive.shape[0] > 0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        unit = F.normalize(z, dim=1, eps=1e-12)
        x = (unit - self.scaler_mean) / self.scaler_scale
        logits = x @ self.weight.T + self.bias
        out = (logits, torch.sigmoid(logits))
        if self.has_zero_shot:
            out += (unit @ self.zero_shot_positive.T - unit @ self.zero_shot_negative.T,)
        return out


class Analyser(nn.Module):
    """images [B, 3, H, W] (normalised) -> (embedding [B, d], logits [B, T], probabilities
    [B, T][, zero_shot [B, T']])."""

    def __init__(self, encoder: nn.Module, head: ProbeHead) -> None:
        super().__init__()
        # The attribute name is the ONNX scope of the tower's nodes (ENCODER_SCOPE).
        self.encoder = encoder
        self.head = head

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUTS if self.head.has_zero_shot else OUTPUTS[:3])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.encoder(images)
        return (z, *self.head(z))


# ---------------------------------------------------------------------------------------------
# What a run holds


@dataclass
class PackagedModel:
    """One model of the eval, ready to package."""

    name: str
    kind: str
    arch: str
    """timm architecture of the image tower's backbone."""
    encoder: nn.Module
    """images -> raw embedding [B, d] (a Student, or the teacher's ImageTower)."""
    embed_dim: int
    image_size: tuple[int, int]
    """(H, W) the tower itself runs at: timm's input_size, and the ONNX models' input (the
    eval's data.image_size, or a student's own size when it resized other input inside)."""
    weights: str | None
    mean: tuple[float, float, float]
    """Per-channel mean of the model's input normalisation (its timm pretrained_cfg)."""
    std: tuple[float, float, float]
    """Per-channel std of the model's input normalisation."""


def eval_folder(run: str | Path) -> Path:
    """The eval folder of RUN: RUN itself (report.json) or RUN/eval (a demo folder)."""
    run = Path(run)
    for folder in (run, run / "eval"):
        if (folder / "report.json").is_file():
            if not (folder / "config.yaml").is_file():
                raise VlcdError(
                    f"package: {folder} has report.json but no config.yaml; rerun `vlcd eval`"
                )
            return folder
    raise VlcdError(
        f"package: {run} holds no finished evaluation (expected {run}/report.json or "
        f"{run}/eval/report.json); run `vlcd eval` (or `vlcd demo`) first"
    )


def load_models(
    cfg: TrainConfig, report: EvalReport, names: Sequence[str], base: Path | None = None
) -> list[PackagedModel]:
    """The eval's models ``names`` on CPU in eval mode, weights from where the eval read them
    (a relative path there is also looked for under ``base``, where the eval ran)."""
    from vlcd_dist.models.exported import load_exported_student
    from vlcd_dist.train.stages import load_frozen_teacher

    out = []
    for name in names:
        r = report.models[name]
        if r.kind == "teacher":
            frozen = load_frozen_teacher(cfg, torch.device("cpu"))
            tower = frozen.teacher.image.float().eval()
            size = tuple(cfg.data.image_size)
            mean, std = frozen.input.mean_values, frozen.input.std_values
            out.append(
                PackagedModel(
                    name,
                    r.kind,
                    tower.model_name,
                    tower,
                    tower.proj.out_features,
                    size,
                    r.weights,
                    mean,
                    std,
                )
            )
            continue
        weights = locate(r.weights, base)
        if not weights or not Path(weights).is_file():
            raise VlcdError(
                f"package: the eval read {name} from {r.weights!r}, which is not there any more"
                + (f" (nor under {base})" if base else "")
            )
        student, _ = load_exported_student(weights)
        student.float().eval()
        arch = student.backbone.pretrained_cfg.get("architecture") or name
        size = student.image_size or tuple(cfg.data.image_size)
        out.append(
            PackagedModel(
                name,
                r.kind,
                arch,
                student,
                student.embed_dim,
                size,
                weights,
                student.mean,
                student.std,
            )
        )
    return out


@dataclass
class EvalHeads:
    """The probes the eval fitted for one model (:mod:`vlcd_dist.evaluation.heads`)."""

    path: Path
    """EVAL/heads/<model>.json; the .safetensors is beside it."""
    info: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def read_heads(folder: Path, name: str) -> EvalHeads:
    """The eval's heads of ``name`` (validated by :meth:`TaskHeads.load`)."""
    from safetensors.torch import load_file

    from vlcd_dist.evaluation.heads import TaskHeads

    json_path = folder / "heads" / f"{name}.json"
    if not json_path.is_file():
        raise VlcdError(
            f"package: {json_path} is missing: the eval that wrote {folder}/report.json kept no "
            "probes (an older vlcd); rerun `vlcd eval` with this version"
        )
    TaskHeads.load(json_path)  # validates both files, naming the field on a bad one
    tensors = load_file(str(json_path.with_suffix(".safetensors")))
    return EvalHeads(json_path, json.loads(json_path.read_text()), tensors)


def split_batches(
    cfg: TrainConfig, split: str, size: tuple[int, int], stats: Stats
) -> Iterator[tuple[torch.Tensor, np.ndarray, list[int]]]:
    """The eval's view of one placenta split at ``size`` (resize to cover, centre crop,
    normalised with ``stats``, the model's (mean, std)), one process: (images [B, 3, H, W],
    labels [B, T], key orders) per batch."""
    from vlcd_dist.models.preprocess import ImageInput

    cfg = copy.deepcopy(cfg)
    cfg.data.image_size = [int(size[0]), int(size[1])]
    stream = cfg.data.stream(cfg.data.placenta, split=split, train=False, seed=cfg.run.seed)
    normalise = ImageInput(stats[0], stats[1], what="package")  # the models' own normalisation
    for batch in ShardLoader(stream, 0, 1):
        images = normalise(batch["image"])
        yield images, batch["labels"].numpy(), [key_order(k) for k in batch["key"]]


def first_images(
    cfg: TrainConfig, split: str, size: tuple[int, int], n: int, stats: Stats
) -> torch.Tensor:
    """The first ``n`` images of a split in key order (the eval's row order, so the same images
    on any machine), keeping no more than ``n`` in memory: [n', 3, H, W], n' <= n."""
    kept: list[tuple[int, int, torch.Tensor]] = []  # a max-heap of (-key, tiebreak, image)
    count = 0
    for images, _, keys in split_batches(cfg, split, size, stats):
        for image, key in zip(images, keys, strict=True):
            item = (-key, -count, image)
            count += 1
            if len(kept) < n:
                heapq.heappush(kept, item)
            elif item > kept[0]:
                heapq.heapreplace(kept, item)
    if not kept:
        raise VlcdError(f"package: the {split} split of {cfg.data.placenta} holds no samples")
    return torch.stack([image for *_, image in sorted(kept, reverse=True)])


# ---------------------------------------------------------------------------------------------
# timm's pretrained format


def timm_files(model: PackagedModel, folder: Path, final_name: str) -> dict[str, Any]:
    """Write ``model.safetensors`` + ``config.json`` into ``folder`` for plain timm, then rebuild
    the model from them with timm alone and compare features. ``final_name``: what the folder
    will be called. Returns {"plain": bool, "note": str, ...}."""
    import timm

    backbone, proj = model.encoder.backbone, model.encoder.proj
    cfg = dict(backbone.pretrained_cfg)
    classifiers = cfg.get("classifier") or "classifier"
    classifiers = [classifiers] if isinstance(classifiers, str) else list(classifiers)
    state = {k: v.detach().clone().contiguous() for k, v in backbone.state_dict().items()}
    bias = proj.bias if proj.bias is not None else torch.zeros(proj.out_features)
    for head in classifiers:  # EfficientFormer: head and head_dist, averaged in eval mode
        state[f"{head}.weight"] = proj.weight.detach().clone().contiguous()
        state[f"{head}.bias"] = bias.detach().clone().contiguous()
    h, w = model.image_size
    cfg.update(
        input_size=[3, h, w],
        mean=list(model.mean),
        std=list(model.std),
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="center",
        num_classes=model.embed_dim,
        tag="vlcd",
        hf_hub_id=None,
        url="",
    )
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    config = {
        "architecture": model.arch,
        "num_classes": model.embed_dim,
        "num_features": int(getattr(backbone, "num_features", 0)),
        "pretrained_cfg": cfg,
    }
    save_tensors(state, folder / TIMM_WEIGHTS)
    write_json(folder / TIMM_CONFIG, config, indent=2)
    result: dict[str, Any] = {
        "load": f'timm.create_model("local-dir:{final_name}", pretrained=True)',
        "architecture": model.arch,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The weight-file form works in every timm 1.0; "local-dir:" (the model card's
            # shorter form) needs a 2025 timm or newer. num_classes goes into the overlay too, or
            # timm drops the classifier as belonging to another head.
            rebuilt = timm.create_model(
                model.arch,
                pretrained=True,
                num_classes=model.embed_dim,
                pretrained_cfg_overlay={"file": str(folder / TIMM_WEIGHTS), **cfg},
            ).eval()
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            ours = model.encoder.backbone(x)
            ours = proj(ours)
            theirs = rebuilt(x)
        diff = float((ours - theirs).abs().max() / max(1.0, float(ours.abs().max())))
        result.update(plain=diff <= 1e-5, max_scaled_diff=diff)
        result["note"] = (
            "rebuilt by plain timm; features equal to this project's"
            if diff <= 1e-5
            else f"rebuilt by plain timm but its features differ by {diff:.3g}"
        )
    except (RuntimeError, ValueError, KeyError) as exn:
        lines = [ln.strip() for ln in str(exn).strip().splitlines() if ln.strip()]
        first = next((ln for ln in lines if "size mismatch" in ln), lines[0] if lines else "")
        first = first[:300]
        result.update(plain=False, max_scaled_diff=None)
        result["note"] = f"plain timm {timm.__version__} cannot rebuild it ({first}); " + (
            "its EfficientFormer builds the last-stage attention for a 7x7 grid (224x224) "
            "only, and this one was trained at a re-laid grid: use model.onnx, or "
            "vlcd_dist.models.create_student with image_size"
            if "efficientformer" in model.arch
            else "use model.onnx"
        )
    return result


# ---------------------------------------------------------------------------------------------
# ONNX: fp32 export, int8 static quantization, runners


def run_onnx(session: Any, images: torch.Tensor, batch: int = 64) -> list[np.ndarray]:
    """All outputs of ``session`` over ``images`` in batches: one array per output."""
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(images), batch):
        parts.append(session.run(None, {INPUT_NAME: images[start : start + batch].numpy()}))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


class _Calibration:
    """ONNX Runtime's calibration reader over training images, a few at a time."""

    def __init__(self, images: torch.Tensor, batch: int = 8) -> None:
        self._batches: Iterator[torch.Tensor] = iter(images.split(batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._batches, None)
        return None if nxt is None else {INPUT_NAME: nxt.numpy()}


def quantize_int8(
    fp32: Path, out: Path, calibration: torch.Tensor, scratch: Path
) -> dict[str, Any]:
    """Static int8 quantization of the image tower's nodes of ``fp32`` into ``out``.

    QDQ format, per-channel int8 weights, uint8 activations (what x86 CPUs run fastest),
    MinMax calibration on ``calibration`` images. The probe head (L2 norm, standardisation,
    the logistic regressions, sigmoid, zero-shot cosines) stays fp32: its inputs are a few
    hundred numbers and its rounding would move every probability. Returns what was done (for
    package.json)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = _need("onnx")
    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    nodes = [n.name for n in onnx.load(str(prepared)).graph.node]
    tower = [n for n in nodes if n.startswith(f"/{ENCODER_SCOPE}/")]
    if not tower:
        raise VlcdError(f"int8: no /{ENCODER_SCOPE}/ nodes in {fp32}; cannot tell the tower apart")

    class Reader(_Calibration, CalibrationDataReader):
        pass

    quantize_static(
        str(prepared),
        str(out),
        Reader(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=tower,
    )
    prepared.unlink(missing_ok=True)
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, per channel",
        "activations": "uint8, MinMax calibration",
        "calibration_images": int(len(calibration)),
        "calibration_split": "train",
        "quantized_nodes": f"{len(tower)} of {len(nodes)} (the image tower; the head stays fp32)",
    }


def compare(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> dict[str, float]:
    """How far ``other``'s outputs are from ``reference``'s (embedding first, probabilities
    third): the largest difference scaled by max(1, |reference|) per output, the largest
    probability difference and the smallest embedding cosine."""
    scaled = {
        name: float(np.abs(o - r).max() / max(1.0, float(np.abs(r).max())))
        for name, r, o in zip(OUTPUTS, reference, other, strict=False)
    }
    a, b = reference[0].astype(np.float64), other[0].astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {
        "max_scaled_diff": max(scaled.values()),
        "max_scaled_diff_per_output": scaled,
        "max_probability_diff": float(np.abs(reference[2] - other[2]).max()),
        "min_embedding_cosine": float(cos.min()),
    }


# ---------------------------------------------------------------------------------------------
# Latency: eager, ONNX fp32, ONNX int8 side by side


def latency(
    eager: nn.Module, files: dict[str, Path], image: torch.Tensor, threads: int, iters: int
) -> dict[str, float]:
    """Median batch-1 milliseconds of eager PyTorch and each ONNX file, ``threads`` threads,
    interleaved (:func:`round_robin`) after 3 warm-up calls each."""
    sessions = {name: open_session(path, threads) for name, path in files.items()}
    feed = image.numpy()

    def eager_call(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return eager(x)

    calls: dict[str, Callable[[torch.Tensor], Any]] = {"eager": eager_call}
    for name, session in sessions.items():
        calls[name] = lambda _x, s=session: s.run(None, {INPUT_NAME: feed})
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        names = list(calls)
        for name in names:
            for _ in range(3):
                calls[name](image)
        times: dict[str, list[float]] = {n: [] for n in names}
        for order in round_robin(len(names), iters):
            for i in order:
                times[names[i]].append(time_call(calls[names[i]], image))
    finally:
        torch.set_num_threads(before)
    return {n: statistics.median(t) * 1e3 for n, t in times.items()}


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class PackageSettings:
    calibration_images: int = 64
    sample_images: int = 8
    latency_threads: tuple[int, ...] = (1, 4)
    latency_iters: int = 20
    tolerance: float = 1e-4
    opset: int = 17


def run_base(folder: Path, run_out: str) -> Path | None:
    """The folder the eval ran in, when its (relative) run.out is how ``folder`` ends: the
    eval's relative paths (shards, teacher, weights) are relative to it."""
    rel = Path(run_out)
    if rel.is_absolute():
        return None
    here = folder.resolve()
    parts = [p for p in rel.parts if p not in ("", ".")]
    if not parts or list(here.parts[-len(parts) :]) != parts:
        return None
    return here.parents[len(parts) - 1]


def locate(path: str | None, base: Path | None) -> str | None:
    """A path the eval recorded: as it is when it exists from here, else under ``base``."""
    if not path or "://" in path or Path(path).is_absolute() or Path(path).exists():
        return path
    if base is not None and (base / path).exists():
        return str(base / path)
    return path


def package_run(
    run: str | Path,
    out: str | Path | None = None,
    models: Sequence[str] | None = None,
    settings: PackageSettings | None = None,
) -> DeploymentReport:
    """Package every model of RUN's eval (or ``models``) into ``out`` (default RUN/package).

    With ``models``, the entries of the other models already in ``out``'s deployment.json (of
    the same run and tasks, their folders present) are kept."""
    from vlcd_dist.data.stream import resolve_shards

    settings = settings or PackageSettings()
    folder = eval_folder(run)
    report = EvalReport.load(folder / "report.json")
    cfg = load_config(folder / "config.yaml")
    base = run_base(folder, cfg.run.out)
    cfg.data.placenta = locate(cfg.data.placenta, base)
    cfg.teacher.checkpoint = locate(cfg.teacher.checkpoint, base)
    out = Path(out) if out is not None else Path(run) / "package"
    names = list(models or report.models)
    if cfg.teacher.source != "vlcd":
        # A foundation-model teacher is not this package's timm tower: only students are packaged.
        foreign = [n for n in names if report.models.get(n) and report.models[n].kind == "teacher"]
        if foreign:
            logger.warning(
                "package: %s is a %s teacher (not packaged; only students are)",
                ", ".join(foreign),
                cfg.teacher.source,
            )
        names = [n for n in names if n not in foreign]
    unknown = [n for n in names if n not in report.models]
    if unknown:
        raise VlcdError(
            f"package: --models {unknown} were not evaluated; choose from {list(report.models)}"
        )
    tasks = resolve_shards(cfg.data.placenta, "test", cfg.data.storage).tasks
    if tasks != report.tasks:
        raise VlcdError(
            f"package: the shards' tasks {tasks} are not the evaluated {report.tasks}; "
            "were the shards rewritten after the eval? Rerun `vlcd eval`"
        )
    heads = {n: read_heads(folder, n) for n in names}
    entries = kept_entries(out, str(run), report.tasks, names)
    out.mkdir(parents=True, exist_ok=True)
    for m in load_models(cfg, report, names, base):
        logger.info("package: %s (%s)", m.name, m.arch)
        entries[m.name] = package_model(m, cfg, report, heads[m.name], out, settings)
    # Students first, the teacher (the reference) last, in the eval's order.
    order = sorted(report.models, key=lambda n: report.models[n].kind == "teacher")
    entries = {n: entries[n] for n in order if n in entries}
    record = DeploymentReport.from_json(
        {
            "format": DEPLOYMENT_FORMAT,
            "run": str(run),
            "tasks": report.tasks,
            "zero_shot_tasks": report.zero_shot.tasks if report.zero_shot else [],
            "image_size": list(cfg.data.image_size),
            "test_samples": int(report.samples.test),
            "bootstrap": {"resamples": cfg.eval.bootstrap, "confidence": cfg.eval.confidence},
            "latency": {
                "batch": 1,
                "threads": list(settings.latency_threads),
                "iters": settings.latency_iters,
                "cpu": cpu_model(),
                "cores": available_cores(),
            },
            "models": entries,
        }
    )
    record.save(out / DEPLOYMENT_FILE)
    return record


def kept_entries(out: Path, run: str, tasks: list[str], names: Sequence[str]) -> dict[str, Any]:
    """The deployment entries in ``out`` of models not being packaged now, when that record is
    of the same run and tasks and their folders are there ({} otherwise)."""
    from vlcd_dist.deploy.record import DeploymentRecordError

    path = out / DEPLOYMENT_FILE
    if not path.is_file():
        return {}
    try:
        old = DeploymentReport.load(path)
    except DeploymentRecordError as exn:
        logger.warning("package: %s is replaced (%s)", path, exn)
        return {}
    if old.run != run or old.tasks != tasks:
        return {}
    models = old.to_json()["models"]
    return {
        n: e
        for n, e in models.items()
        if n not in names and (out / e["folder"] / "package.json").is_file()
    }


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer and timm log through the root logger (every file it loads, a
    per-channel axis it skips on LayerNorm weights); keep those lines out of the package log."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def package_model(
    m: PackagedModel,
    cfg: TrainConfig,
    report: EvalReport,
    heads: EvalHeads,
    out: Path,
    settings: PackageSettings,
) -> dict[str, Any]:
    """Write ``out/<model>/`` (through a temporary folder) and return its deployment entry."""
    from vlcd_dist.deploy.model_card import write_model_card

    model = Analyser(m.encoder, ProbeHead(heads.tensors)).eval()
    size = m.image_size
    final = out / m.name
    work = out / f".{m.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with _quiet_root_logger():
            timm_result = timm_files(m, work, final.name)
        for suffix in (".json", ".safetensors"):
            shutil.copyfile(heads.path.with_suffix(suffix), work / f"{HEADS_STEM}{suffix}")
        stats = (m.mean, m.std)
        calibration = first_images(cfg, "train", size, settings.calibration_images, stats)
        # fp32 ONNX (a batch-2 example: a batch of one could bake in size-1 shortcuts)
        meta = {"vlcd_package": json.dumps({"name": m.name, "tasks": report.tasks})}
        export_onnx(
            model, calibration[:2], work / FP32_FILE, settings.opset, meta, model.output_names
        )
        with _quiet_root_logger():
            quantized = quantize_int8(work / FP32_FILE, work / INT8_FILE, calibration, work)
        sessions = {
            "fp32": open_session(work / FP32_FILE, available_cores()),
            "int8": open_session(work / INT8_FILE, available_cores()),
        }
        scored = score_test_split(model, sessions, cfg, size, report.tasks, settings, stats)
        verify = scored["verify"]
        if verify["fp32"]["max_scaled_diff"] > settings.tolerance:
            raise VlcdError(
                f"package: {m.name}'s model.onnx differs from PyTorch by "
                f"{verify['fp32']['max_scaled_diff']:.3g} (tolerance {settings.tolerance:g}) on "
                f"{verify['images']} test images; left in {work} for inspection"
            )
        if verify["int8"]["min_embedding_cosine"] < INT8_COSINE_WARN:
            logger.warning(
                "package: %s's int8 embeddings are far from fp32's (cosine down to %.3f on %d "
                "test images); compare the AUCs before using model.int8.onnx",
                m.name,
                verify["int8"]["min_embedding_cosine"],
                verify["images"],
            )
        r = report.models[m.name]
        metrics = scored["metrics"]
        logger.info(
            "package: %s test mean AUC eval %.3f, ONNX fp32 %.3f, int8 %.3f",
            m.name,
            r.auc_mean,
            metrics["fp32"]["auc"]["mean"],
            metrics["int8"]["auc"]["mean"],
        )
        logger.info(
            "package: %s: timing at batch 1, %s thread(s)", m.name, settings.latency_threads
        )
        timings = {
            str(t): latency(
                model,
                {"onnx_fp32": work / FP32_FILE, "onnx_int8": work / INT8_FILE},
                scored["first_image"],
                t,
                settings.latency_iters,
            )
            for t in settings.latency_threads
        }
        entry = {
            "kind": m.kind,
            "arch": m.arch,
            "params": int(r.params),
            "folder": m.name,
            "size_bytes": {
                "pytorch": (work / TIMM_WEIGHTS).stat().st_size,
                "onnx_fp32": (work / FP32_FILE).stat().st_size,
                "onnx_int8": (work / INT8_FILE).stat().st_size,
            },
            "auc": {
                "eval": {**r.auc, "mean": r.auc_mean},
                "fp32": metrics["fp32"]["auc"],
                "int8": metrics["int8"]["auc"],
            },
            "ci": {"fp32": metrics["fp32"]["ci"], "int8": metrics["int8"]["ci"]},
            "latency_ms": timings,
            "verify": {
                "fp32_max_diff": verify["fp32"]["max_scaled_diff"],
                "int8_max_probability_diff": verify["int8"]["max_probability_diff"],
                "int8_min_embedding_cosine": verify["int8"]["min_embedding_cosine"],
            },
            "timm": {"plain": bool(timm_result["plain"]), "note": timm_result["note"]},
        }
        package = package_json(m, cfg, report, heads.info, model, entry, work)
        package.update(timm=timm_result, verification=verify, quantization=quantized)
        write_json(work / "package.json", package, indent=2)
        write_model_card(work / "README.md", package, heads.info)
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    except BaseException:
        logger.error("package: %s failed; its partial files are in %s", m.name, work)
        raise
    return entry


def score_test_split(
    model: Analyser,
    sessions: dict[str, Any],
    cfg: TrainConfig,
    size: tuple[int, int],
    tasks: list[str],
    settings: PackageSettings,
    stats: Stats,
) -> dict[str, Any]:
    """Stream the test split once through every session: AUCs per session ({"fp32": score(),
    "int8": ...}), each session against PyTorch on the first ``settings.sample_images`` test
    images (:func:`compare`; none of them calibrated the int8 model), and the first image (for
    timing)."""
    logits: dict[str, list[np.ndarray]] = {name: [] for name in sessions}
    labels, keys = [], []
    verify: dict[str, Any] = {}
    first: torch.Tensor | None = None
    for images, y, k in split_batches(cfg, "test", size, stats):
        outs = {name: run_onnx(session, images) for name, session in sessions.items()}
        if first is None:
            first = images[:1].clone()
            n = min(len(images), settings.sample_images)
            with torch.inference_mode():
                eager = [t.numpy() for t in model(images[:n])]
            verify = {name: compare(eager, [o[:n] for o in o_]) for name, o_ in outs.items()}
            verify["images"] = n
        for name, o in outs.items():
            logits[name].append(o[1])
        labels.append(y)
        keys.extend(k)
    if first is None:
        raise VlcdError(f"package: the test split of {cfg.data.placenta} holds no samples")
    order = np.argsort(np.asarray(keys), kind="stable")
    y_all = np.concatenate(labels)[order]
    metrics = {
        name: score(y_all, np.concatenate(parts)[order], tasks, cfg)
        for name, parts in logits.items()
    }
    return {"metrics": metrics, "verify": verify, "first_image": first}


def score(y: np.ndarray, logits: np.ndarray, tasks: list[str], cfg: TrainConfig) -> dict:
    """Test AUC per task and mean, with the eval's bootstrap intervals (same resamples, seed;
    None without a bootstrap)."""
    columns = list(range(len(tasks)))
    aucs = aucs_by_task(y, logits, tasks, columns)
    keys = [*tasks, "mean"]
    out = {"auc": {**aucs, "mean": mean_finite(aucs)}, "ci": dict.fromkeys(keys)}
    if cfg.eval.bootstrap:
        ci = bootstrap_intervals(y, logits, cfg.eval.bootstrap, cfg.eval.confidence, cfg.run.seed)
        out["ci"] = {t: ci[str(j)] for j, t in enumerate(tasks)} | {"mean": ci["mean"]}
    return out


def package_json(
    m: PackagedModel,
    cfg: TrainConfig,
    report: EvalReport,
    heads_json: dict[str, Any],
    model: Analyser,
    entry: dict[str, Any],
    work: Path,
) -> dict[str, Any]:
    """The model folder's package.json: what ``vlcd predict`` reads, and where it came from."""
    import timm

    h, w = m.image_size
    files = {
        f.name: {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
        for f in sorted(work.iterdir())
        if f.is_file()
    }
    r = report.models[m.name]
    return {
        "format": PACKAGE_FORMAT,
        "name": m.name,
        "kind": m.kind,
        "arch": m.arch,
        "embed_dim": m.embed_dim,
        "tasks": report.tasks,
        "zero_shot_tasks": (heads_json.get("zero_shot") or {}).get("tasks", []),
        "input": {"name": INPUT_NAME, **preprocessing((h, w), m.mean, m.std)},
        "outputs": model.output_names,
        "onnx": {"fp32": FP32_FILE, "int8": INT8_FILE},
        "files": files,
        "metrics": {k: entry[k] for k in ("auc", "ci", "latency_ms", "size_bytes")},
        "test_samples": int(report.samples.test),
        "train_samples": int(report.samples.train),
        "params": int(r.params),
        "provenance": {
            "eval": str(Path(cfg.run.out)),
            "shards": cfg.data.placenta,
            "weights": m.weights,
            "stage": r.stage,
            "step": r.step,
            "teacher": {
                "preset": cfg.teacher.preset,
                "checkpoint": cfg.teacher.checkpoint,
                "embed_dim": m.embed_dim,
            },
            "distill_lambda": cfg.loss.distill_lambda,
            "eval_image_size": list(cfg.data.image_size),
            "eval_autocast": cfg.teacher.autocast_dtype if m.kind == "teacher" else None,
            "seed": cfg.run.seed,
            "labels": "extracted from the pathology reports (not read from the photographs)",
        },
        "versions": {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "onnx": _need("onnx").__version__,
            "onnxruntime": _need("onnxruntime").__version__,
        },
    }

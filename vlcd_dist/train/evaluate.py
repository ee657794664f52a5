"""Evaluation: linear probes on frozen features, bootstrap intervals, size and CPU latency.

For the teacher's image tower and every student: features of the placenta train and test
splits (eval transform), L2-normalised, standardised on the train split; per task a logistic
regression whose C is picked by stratified cross-validation on the train split (AUC); test
AUC-ROC per task and their mean, with a percentile bootstrap interval over test samples (the
same resamples for every task, so the mean's interval accounts for their correlation).

Feature extraction is spread over the ranks (each reads its own shards) and gathered; probes,
timing and reports are rank 0's. The probe and bootstrap functions take plain arrays and need
no launcher, so they are usable on their own.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlcd_dist import distributed as vdist
from vlcd_dist.data.stream import ShardLoader
from vlcd_dist.errors import VlcdError
from vlcd_dist.train.backend import Backend, configure_threads, create_backend
from vlcd_dist.train.checkpoint import load_exported_student, resolve_student_file
from vlcd_dist.train.config import TrainConfig, dump_yaml
from vlcd_dist.train.logging import TBLogger, setup_console_logging

logger = logging.getLogger("vlcd_dist.eval")

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Probes and intervals on plain arrays


def auc_roc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN when y has one class only."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm: [N, d] -> [N, d]."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def probe_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    cs: list[float],
    folds: int,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Logistic-regression probe of one task.

    train_x [N, d], train_y [N] (0/1), test_x [M, d]: features (normalised by the caller).
    Returns (test scores [M], chosen C). C maximises the mean cross-validated AUC on train.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    train_y = np.asarray(train_y).astype(int)
    minority = int(min(train_y.sum(), train_y.size - train_y.sum()))
    if minority == 0:
        return np.full(len(test_x), float(train_y.mean())), float("nan")
    best_c, best_auc = cs[0], -1.0
    k = min(folds, minority)
    if len(cs) > 1 and k >= 2:
        splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(train_x, train_y))
        for c in cs:
            aucs = []
            for fit_idx, val_idx in splits:
                model = LogisticRegression(C=c, max_iter=2000).fit(
                    train_x[fit_idx], train_y[fit_idx]
                )
                aucs.append(auc_roc(train_y[val_idx], model.decision_function(train_x[val_idx])))
            score = float(np.nanmean(aucs))
            if score > best_auc:
                best_c, best_auc = c, score
    model = LogisticRegression(C=best_c, max_iter=2000).fit(train_x, train_y)
    return model.decision_function(test_x), float(best_c)


def bootstrap_intervals(
    y: np.ndarray, scores: np.ndarray, resamples: int, confidence: float, seed: int = 0
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of every task's AUC and of their mean.

    y, scores: [M, T] test labels and probe scores. The same resampled rows serve all tasks.
    Returns {"task_j": [lo, hi] for j, ..., "mean": [lo, hi]} keyed by column index as str.
    """
    rng = np.random.default_rng(seed)
    m, t = y.shape
    per_task = np.full((resamples, t), np.nan)
    for b in range(resamples):
        rows = rng.integers(0, m, m)
        for j in range(t):
            per_task[b, j] = auc_roc(y[rows, j], scores[rows, j])
    alpha = (1 - confidence) / 2
    out = {}
    for j in range(t):
        col = per_task[:, j][~np.isnan(per_task[:, j])]
        out[str(j)] = (
            [float(np.quantile(col, alpha)), float(np.quantile(col, 1 - alpha))]
            if col.size
            else [float("nan")] * 2
        )
    means = np.nanmean(per_task, axis=1)
    means = means[~np.isnan(means)]
    out["mean"] = (
        [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]
        if means.size
        else [float("nan")] * 2
    )
    return out


def roc_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) of the ROC curve."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(y).astype(int), score)
    return fpr, tpr


def measure_latency(
    fn: FeatureFn,
    shape: tuple[int, ...],
    iters: int,
    threads: int,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> float:
    """Median wall time (ms) of ``fn`` on a random batch of ``shape`` with ``threads`` CPU
    threads, after 3 warm-up calls."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(*shape).contiguous(memory_format=memory_format)
        times = []
        with torch.no_grad():
            for i in range(3 + iters):
                t0 = time.perf_counter()
                fn(x)
                if i >= 3:
                    times.append((time.perf_counter() - t0) * 1000)
        return float(statistics.median(times))
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# The evaluation stage


@dataclass
class EvalModel:
    """One evaluated image encoder: features [B, 3, H, W] -> [B, d], on CPU for timing."""

    name: str
    kind: str  # "teacher" or "student"
    arch: str
    module: torch.nn.Module
    features: FeatureFn
    params: int
    info: dict[str, Any] = field(default_factory=dict)


class Evaluator:
    """``vlcd eval``: report.json, report.md, plots and TensorBoard under run.out."""

    def __init__(self, cfg: TrainConfig, backend: Backend | None = None) -> None:
        self.cfg = cfg
        configure_threads(cfg.run.threads, cfg.run.flush_denormal)
        self.backend = backend or create_backend(
            "accelerate", mixed_precision="no", cpu=cfg.run.cpu, channels_last=cfg.run.channels_last
        )
        setup_console_logging(self.backend.is_main)
        self.out = Path(cfg.run.out)
        self.device = self.backend.device

    # -- models ----------------------------------------------------------------------------

    def models(self) -> list[EvalModel]:
        """The teacher's image tower (if included) and every configured student."""
        from vlcd_dist.train.stages import load_frozen_teacher

        cfg = self.cfg
        out: list[EvalModel] = []
        if cfg.eval.include_teacher:
            frozen = load_frozen_teacher(cfg, self.device, self.backend.memory_format)
            image = frozen.teacher.image
            out.append(
                EvalModel(
                    name="teacher",
                    kind="teacher",
                    arch=f"{frozen.cfg.image_model} ({frozen.cfg.name})",
                    module=frozen,
                    features=frozen.encode_image,
                    params=sum(p.numel() for p in image.parameters()),
                    info={"checkpoint": frozen.cfg.checkpoint},
                )
            )
        for spec in cfg.students:
            source = cfg.eval.students_from or spec.init_from
            if source is None:
                raise VlcdError(
                    f"eval: where are the weights of student {spec.name!r}? Set "
                    "eval.students_from to the distill output folder (or students.N.init_from)"
                )
            path = resolve_student_file(source, spec.name)
            student, info = load_exported_student(path)
            student.eval().to(self.device, memory_format=self.backend.memory_format)
            out.append(
                EvalModel(
                    name=spec.name,
                    kind="student",
                    arch=spec.name,
                    module=student,
                    features=student,
                    params=sum(p.numel() for p in student.parameters()),
                    info={
                        "weights": str(path),
                        **{k: info.get(k) for k in ("stage", "step", "init_from")},
                    },
                )
            )
        return out

    # -- features --------------------------------------------------------------------------

    @torch.no_grad()
    def extract(
        self, models: list[EvalModel], split: str
    ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
        """Features of every model and labels of one split, gathered from all ranks.

        Returns ({model: [N, d] float32}, labels [N, T], task names)."""
        cfg = self.cfg
        stream = cfg.data.stream(cfg.data.placenta, split=split, train=False, seed=cfg.run.seed)
        loader = ShardLoader(stream, self.backend.rank, self.backend.world_size)
        feats: dict[str, list[torch.Tensor]] = {m.name: [] for m in models}
        labels: list[torch.Tensor] = []
        for batch in loader:
            images = self.backend.images(batch["image"])
            for m in models:
                feats[m.name].append(m.features(images).float())
            labels.append(batch["labels"].to(self.device))
        dims = {m.name: int(m.module.embed_dim) for m in models}
        local = {
            name: torch.cat(v) if v else torch.zeros(0, dims[name], device=self.device)
            for name, v in feats.items()
        }
        y = torch.cat(labels) if labels else torch.zeros(0, len(loader.tasks), device=self.device)
        sizes = vdist.gather_sizes(y.shape[0], like=y)
        gathered = {n: vdist.gather_no_grad(f, sizes).cpu().numpy() for n, f in local.items()}
        y_all = vdist.gather_no_grad(y, sizes).cpu().numpy()
        if loader.skipped and sum(loader.skipped.values()):
            logger.warning(
                "eval %s: skipped samples on rank %d: %s",
                split,
                self.backend.rank,
                dict(loader.skipped),
            )
        return gathered, y_all, loader.tasks

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any] | None:
        """Extract, probe, time, report. Returns the report on rank 0 (None elsewhere)."""
        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)
        models = self.models()
        t0 = time.perf_counter()
        train_f, train_y, tasks = self.extract(models, "train")
        test_f, test_y, _ = self.extract(models, "test")
        logger.info(
            "eval: features of %d train / %d test samples in %.0f s",
            len(train_y),
            len(test_y),
            time.perf_counter() - t0,
        )
        report = None
        if self.backend.is_main:
            report = self.report(models, tasks, train_f, train_y, test_f, test_y)
        self.backend.barrier()
        return report

    def report(
        self,
        models: list[EvalModel],
        tasks: list[str],
        train_f: dict[str, np.ndarray],
        train_y: np.ndarray,
        test_f: dict[str, np.ndarray],
        test_y: np.ndarray,
    ) -> dict[str, Any]:
        """Probes, intervals, latency; writes report.json/.md, plots and TensorBoard."""
        from sklearn.preprocessing import StandardScaler

        cfg, e = self.cfg, self.cfg.eval
        h, w = cfg.data.image_size
        results: dict[str, Any] = {}
        rocs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for m in models:
            t0 = time.perf_counter()
            scaler = StandardScaler().fit(l2_normalize(train_f[m.name]))
            xtr = scaler.transform(l2_normalize(train_f[m.name]))
            xte = scaler.transform(l2_normalize(test_f[m.name]))
            scores = np.zeros_like(test_y, dtype=np.float64)
            chosen = {}
            for j, task in enumerate(tasks):
                scores[:, j], chosen[task] = probe_scores(
                    xtr, train_y[:, j], xte, e.probe_cs, e.cv_folds, cfg.run.seed
                )
            aucs = {task: auc_roc(test_y[:, j], scores[:, j]) for j, task in enumerate(tasks)}
            rocs[m.name] = [roc_points(test_y[:, j], scores[:, j]) for j in range(len(tasks))]
            ci = (
                bootstrap_intervals(test_y, scores, e.bootstrap, e.confidence, cfg.run.seed)
                if e.bootstrap
                else {}
            )
            module = m.module.to("cpu")
            fn = m.features
            latency = measure_latency(
                fn,
                (e.latency_batch, 3, h, w),
                e.latency_iters,
                e.latency_threads,
                self.backend.memory_format,
            )
            module.to(self.device)
            results[m.name] = {
                "kind": m.kind,
                "arch": m.arch,
                "auc": aucs,
                "auc_mean": float(np.nanmean(list(aucs.values()))),
                "ci": {"mean": ci.get("mean"), **{t: ci.get(str(j)) for j, t in enumerate(tasks)}},
                "probe_c": chosen,
                "params": int(m.params),
                "latency_ms": latency,
                **m.info,
            }
            logger.info(
                "eval: %s mean AUC %.3f (%.0f s)",
                m.name,
                results[m.name]["auc_mean"],
                time.perf_counter() - t0,
            )
        reference = results.get("teacher")
        for r in results.values():
            r["speedup"] = reference["latency_ms"] / r["latency_ms"] if reference else None
            r["delta_vs_teacher"] = r["auc_mean"] - reference["auc_mean"] if reference else None
        report = {
            "tasks": tasks,
            "samples": {"train": int(len(train_y)), "test": int(len(test_y))},
            "image_size": [h, w],
            "latency": {"batch": e.latency_batch, "threads": e.latency_threads, "device": "cpu"},
            "bootstrap": {"resamples": e.bootstrap, "confidence": e.confidence},
            "models": results,
        }
        self.write(report, rocs)
        return report

    def write(self, report: dict[str, Any], rocs: dict[str, list]) -> None:
        """report.json, report.md, auc.png, roc.png, and the same into TensorBoard."""
        from vlcd_dist.train.plots import auc_bars, roc_grid

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_yaml(self.cfg))
        (self.out / "report.json").write_text(json.dumps(report, indent=1))
        table = markdown_report(report)
        (self.out / "report.md").write_text(table)
        tasks = report["tasks"]
        names = list(report["models"])
        bars = auc_bars(
            tasks + ["mean"],
            {
                n: [report["models"][n]["auc"][t] for t in tasks]
                + [report["models"][n]["auc_mean"]]
                for n in names
            },
        )
        roc = roc_grid(
            tasks, {n: rocs[n] for n in names}, {n: report["models"][n]["auc"] for n in names}
        )
        from PIL import Image

        Image.fromarray(bars).save(self.out / "auc.png")
        Image.fromarray(roc).save(self.out / "roc.png")
        tb = TBLogger(self.out / "tb", self.cfg.logging.tensorboard)
        try:
            for name, r in report["models"].items():
                values = {f"eval/{name}/auc_{t}": v for t, v in r["auc"].items()}
                values[f"eval/{name}/auc_mean"] = r["auc_mean"]
                values[f"eval/{name}/latency_ms"] = r["latency_ms"]
                tb.scalars(values, 0)
            tb.image("eval/auc_bars", bars)
            tb.image("eval/roc_curves", roc)
            tb.text("eval/report", table)
            tb.text("config", "```yaml\n" + dump_yaml(self.cfg) + "\n```")
        finally:
            tb.close()


def markdown_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table: model x task AUC, mean [CI], params, latency, speed-up."""
    tasks = report["tasks"]
    level = int(round(report["bootstrap"]["confidence"] * 100))
    head = ["model", *tasks, f"mean AUC [{level}% CI]", "params (M)", "latency (ms)", "speed-up"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, r in report["models"].items():
        ci = r["ci"].get("mean")
        mean = f"{r['auc_mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        speed = f"{r['speedup']:.1f}x" if r.get("speedup") else "-"
        row = [
            name,
            *(f"{r['auc'][t]:.3f}" for t in tasks),
            mean,
            f"{r['params'] / 1e6:.1f}",
            f"{r['latency_ms']:.1f}",
            speed,
        ]
        lines.append("| " + " | ".join(row) + " |")
    lat = report["latency"]
    h, w = report["image_size"]
    notes = (
        f"\nTest AUC-ROC of logistic-regression probes on L2-normalised features "
        f"({report['samples']['train']} train / {report['samples']['test']} test samples, "
        f"{h}x{w} px). Latency: median CPU forward of a batch of {lat['batch']} with "
        f"{lat['threads']} thread(s); the teacher's is its image tower's.\n"
    )
    return "\n".join(lines) + "\n" + notes

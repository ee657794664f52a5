"""The eval stage (``vlcd eval``): it loads the teacher's image tower and every student, reads
the placenta train and test splits on every rank, and measures with :mod:`vlcd_dist.evaluation`.

Per model: features of both splits gathered from all ranks in key order; the train split cut by
study into the probes' fit rows and eval.val_fraction of validation rows (:func:`validation_rows`);
linear probes per task on the fit rows (C by study-grouped cross-validation there), validation
and test AUC-ROC and ROC curves, a BCa bootstrap interval of every task's test AUC and of their
mean (the same resamples for every task and model), each student's test AUC minus the
teacher's with a paired interval (:meth:`Evaluator.paired`), parameters and CPU
latency in each of eval.latency_precisions, every model timed alike (:meth:`Evaluator.latency`);
with ``eval.degrade`` the test split again under each corruption and severity, scored by the
probes fitted on clean features (severity 0 reproduces the clean AUCs exactly); with
``eval.zero_shot_prompts`` the zero-shot AUCs from the teacher's text tower (each side's prompts
ensembled).

The probes are kept: every model's scaler, per-task logistic regressions, zero-shot prompt
embeddings and per-task operating points (the largest threshold whose out-of-fold train
sensitivity reaches eval.operating_sensitivity) go to heads/<model>.json + .safetensors
(:class:`~vlcd_dist.evaluation.heads.TaskHeads`, which ``vlcd package`` copies).

Rank 0 writes the heads, config.yaml, the TensorBoard scalars, the files of the renderer the caller
hands in (the ``eval`` command passes :func:`vlcd_dist.reporting.eval_files.write_eval_outputs`:
report.md and the figures; the harness does not import the reporting layer), and last
report.json (:class:`~vlcd_dist.evaluation.results.EvalReport`), which marks the stage finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlcd_dist.config import TrainConfig, dump_yaml
from vlcd_dist.data.placenta import assign_split
from vlcd_dist.data.stream import ShardLoader
from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.efficiency import latency_by_precision
from vlcd_dist.evaluation.features import FeatureFn, extract_features
from vlcd_dist.evaluation.heads import TaskHeads, ZeroShotPrompts
from vlcd_dist.evaluation.metrics import (
    aucs_by_task,
    bootstrap_intervals,
    l2_normalize,
    mean_finite,
    paired_intervals,
    roc_points,
)
from vlcd_dist.evaluation.probes import apply_probes, fit_probe
from vlcd_dist.evaluation.results import (
    BootstrapSetup,
    Degrade,
    DegradedResult,
    EvalReport,
    LatencySetup,
    ModelResult,
    Paired,
    Roc,
    Samples,
    ZeroShot,
    ZeroShotResult,
)
from vlcd_dist.evaluation.robustness import DegradedShardLoader
from vlcd_dist.evaluation.zeroshot import ensemble_prompts, prompt_tasks, zero_shot_scores
from vlcd_dist.io import write_text
from vlcd_dist.models.exported import load_exported_student, resolve_student_file
from vlcd_dist.train.backend import Backend, configure_threads
from vlcd_dist.train.backends import create_backend
from vlcd_dist.train.logging import TBLogger, setup_console_logging
from vlcd_dist.train.preflight import check_stage_inputs
from vlcd_dist.train.stages import load_frozen_teacher

logger = logging.getLogger("vlcd_dist.eval")


# ---------------------------------------------------------------------------------------------
# The evaluation stage


@dataclass
class EvalModel:
    """One evaluated image encoder: features [B, 3, H, W] -> [B, d], on CPU for timing."""

    name: str
    kind: str  # "teacher" or "student"
    arch: str
    module: torch.nn.Module
    """What moves between devices (it holds ``timed``)."""
    features: FeatureFn
    """The features the probes see (the teacher's under its own autocast, as in training)."""
    timed: FeatureFn
    """The plain forward that is timed: every eval.latency_precisions entry is applied to it
    as to every other model (the teacher's image tower without its own autocast)."""
    params: int
    info: dict[str, Any] = field(default_factory=dict)
    resizes_to: tuple[int, int] | None = None
    """The size the model resizes data.image_size batches to inside, if it does."""


@dataclass
class SplitFeatures:
    """One split as the eval sees it: every model's features {model: [N, d]}, labels [N, T],
    the study of every row [N] (int64, :func:`~vlcd_dist.evaluation.features.extract_features`)
    and the task names."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    studies: np.ndarray
    tasks: list[str]

    def rows(self, mask: np.ndarray) -> SplitFeatures:
        """The rows where ``mask`` [N] (bool) holds."""
        return SplitFeatures(
            {m: f[mask] for m, f in self.features.items()},
            self.labels[mask],
            self.studies[mask],
            self.tasks,
        )


def _normalised(student: torch.nn.Module) -> FeatureFn:
    """The student's features of [0, 1] images: its own normalisation, then its forward."""

    def features(images: torch.Tensor) -> torch.Tensor:
        return student(student.normalize(images))

    return features


VALIDATION_SEED = 1
"""The validation split depends on the studies, their labels and eval.val_fraction only (not on
run.seed), so that runs of different seeds are chosen between on the same rows."""


def validation_rows(studies: np.ndarray, labels: np.ndarray, fraction: float) -> np.ndarray:
    """Which train rows [N] (bool) are held out for validation: ``fraction`` of the studies,
    stratified by each study's label pattern (a task is positive for a study when any of its
    rows is) and drawn like the test split (:func:`~vlcd_dist.data.placenta.assign_split`), so
    that a study's rows are all on one side. All False when ``fraction`` is 0."""
    if fraction <= 0 or not len(studies):
        return np.zeros(len(studies), dtype=bool)
    patterns: dict[int, np.ndarray] = {}
    for study, row in zip(studies.tolist(), labels.astype(int), strict=True):
        patterns[study] = np.maximum(patterns[study], row) if study in patterns else row
    held = assign_split({s: p.tolist() for s, p in patterns.items()}, fraction, VALIDATION_SEED)
    return np.isin(studies, np.fromiter(held, dtype=np.int64, count=len(held)))


class Evaluator:
    """``vlcd eval``: report.json, config.yaml and TensorBoard scalars under run.out; the
    command renders report.md and the figures from the report (:mod:`vlcd_dist.reporting`)."""

    def __init__(
        self,
        cfg: TrainConfig,
        backend: Backend | None = None,
        render: Callable[..., None] | None = None,
    ) -> None:
        """``render(out, report, tensorboard=...)``: writes the human-readable files of a report
        into ``out`` (rank 0, before report.json)."""
        self.cfg = cfg
        self.render = render
        check_stage_inputs(cfg, "eval")
        configure_threads(cfg.run.threads, cfg.run.flush_denormal)
        self.backend = backend or create_backend(
            "accelerate",
            mixed_precision="no",
            cpu=cfg.run.cpu,
            channels_last=cfg.run.channels_last,
            collective_timeout_s=cfg.run.collective_timeout_s,
        )
        setup_console_logging(self.backend.is_main)
        self.out = Path(cfg.run.out)
        self.device = self.backend.device
        self.frozen_teacher: torch.nn.Module | None = None

    # -- models ----------------------------------------------------------------------------

    def models(self) -> list[EvalModel]:
        """The teacher's image tower (if included) and every configured student."""
        cfg = self.cfg
        out: list[EvalModel] = []
        if cfg.eval.include_teacher:
            frozen = load_frozen_teacher(cfg, self.device, self.backend.memory_format)
            self.frozen_teacher = frozen
            out.append(
                EvalModel(
                    name="teacher",
                    kind="teacher",
                    arch=str(frozen.teacher.arch),
                    module=frozen,
                    features=frozen.encode_image,
                    # Its own resize and normalisation included, as for every model below.
                    timed=frozen.image_forward,
                    params=frozen.num_image_params(),
                    info={"weights": frozen.teacher.weights},
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
            size = student.image_size
            out.append(
                EvalModel(
                    name=spec.name,
                    kind="student",
                    arch=spec.name,
                    module=student,
                    # [0, 1] batches in; each student normalises them with its own statistics.
                    features=_normalised(student),
                    timed=_normalised(student),
                    params=sum(p.numel() for p in student.parameters()),
                    info={
                        "weights": str(path),
                        **{k: info.get(k) for k in ("stage", "step", "init_from")},
                    },
                    resizes_to=size if size and size != tuple(cfg.data.image_size) else None,
                )
            )
        return out

    def zero_shot_prompts(self, chosen: list[str]) -> ZeroShotPrompts:
        """The recipe's prompts of the tasks ``chosen`` (see :func:`prompt_tasks`), each embedded
        by the teacher's text tower like a report's anchor (mean over its sentences), then each
        side of a task ensembled (:func:`ensemble_prompts`)."""
        from vlcd_dist.anchors import compute_text_anchors

        prompts = self.cfg.eval.zero_shot_prompts
        teacher = self.frozen_teacher or load_frozen_teacher(self.cfg, self.device)
        texts = {t: (list(prompts[t].positive), list(prompts[t].negative)) for t in chosen}
        flat = [p for t in chosen for side in texts[t] for p in side]
        emb = iter(compute_text_anchors(teacher, flat).numpy())
        sides: dict[str, list[np.ndarray]] = {"positive": [], "negative": []}
        for t in chosen:
            for name, side in zip(sides, texts[t], strict=True):
                sides[name].append(ensemble_prompts(np.stack([next(emb) for _ in side])))
        return ZeroShotPrompts(
            chosen, texts, np.stack(sides["positive"]), np.stack(sides["negative"])
        )

    # -- features --------------------------------------------------------------------------

    def loader(self, split: str, degradation: tuple[str, int] | None = None) -> ShardLoader:
        """This rank's loader of one split, clean or with (corruption, severity) applied."""
        cfg = self.cfg
        stream = cfg.data.stream(cfg.data.placenta, split=split, train=False, seed=cfg.run.seed)
        rank, world = self.backend.rank, self.backend.world_size
        if degradation is None:
            return ShardLoader(stream, rank, world)
        name, severity = degradation
        return DegradedShardLoader(stream, rank, world, name, severity, cfg.run.seed)

    def extract(
        self, models: list[EvalModel], split: str, degradation: tuple[str, int] | None = None
    ) -> SplitFeatures:
        """Features of every model, labels and studies of one split (optionally degraded),
        gathered from all ranks in the order of the sample keys (:func:`extract_features`)."""
        loader = self.loader(split, degradation)
        encoders = {m.name: (m.features, int(m.module.embed_dim)) for m in models}
        gathered, y_all, studies = extract_features(
            encoders, loader, len(loader.tasks), self.device, prepare=self.backend.images
        )
        if loader.skipped and sum(loader.skipped.values()):
            logger.warning(
                "eval %s: skipped samples on rank %d: %s",
                split,
                self.backend.rank,
                dict(loader.skipped),
            )
        return SplitFeatures(gathered, y_all, studies, list(loader.tasks))

    def extract_degraded(
        self, models: list[EvalModel], test_y: np.ndarray
    ) -> dict[tuple[str, int], dict[str, np.ndarray]]:
        """Test features of every model under each (corruption, severity) of eval.degrade."""
        d = self.cfg.eval.degrade
        out: dict[tuple[str, int], dict[str, np.ndarray]] = {}
        for name in d.corruptions:
            for severity in d.severities:
                t0 = time.perf_counter()
                split = self.extract(models, "test", (name, severity))
                if not np.array_equal(split.labels, test_y):
                    raise VlcdError(
                        f"eval: the degraded test split ({name}, severity {severity}) did not "
                        "come back in the clean order; were the shards rewritten meanwhile?"
                    )
                out[(name, severity)] = split.features
                logger.info(
                    "eval: %s severity %d: features of %d test samples in %.0f s",
                    name,
                    severity,
                    len(split.labels),
                    time.perf_counter() - t0,
                )
        return out

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> EvalReport | None:
        """Extract, probe, time, report. Returns the report on rank 0 (None elsewhere)."""
        cfg = self.cfg
        torch.manual_seed(cfg.run.seed)
        # Prompts are checked against the shards' tasks before any model is loaded.
        chosen = prompt_tasks(
            cfg.eval.zero_shot_prompts, self.loader("test").tasks, cfg.data.placenta
        )
        models = self.models()
        # Every rank embeds the prompts (a few sentences), so a failure stops all ranks alike.
        prompts = self.zero_shot_prompts(chosen) if chosen else None
        t0 = time.perf_counter()
        train = self.extract(models, "train")
        test = self.extract(models, "test")
        logger.info(
            "eval: features of %d train / %d test samples in %.0f s",
            len(train.labels),
            len(test.labels),
            time.perf_counter() - t0,
        )
        degraded = self.extract_degraded(models, test.labels) if cfg.eval.degrade.enabled else {}
        report = None
        if self.backend.is_main:
            report = self.report(models, train, test, degraded=degraded, prompts=prompts)
        self.backend.barrier()
        return report

    def report(
        self,
        models: list[EvalModel],
        train: SplitFeatures,
        test: SplitFeatures,
        degraded: dict[tuple[str, int], dict[str, np.ndarray]] | None = None,
        prompts: ZeroShotPrompts | None = None,
    ) -> EvalReport:
        """Probes, intervals, latency, robustness, zero-shot; writes the heads, report.json,
        config.yaml and the TensorBoard scalars (the tables and figures are the reporting
        layer's).

        The train split is cut by study into the probes' fit rows and eval.val_fraction of
        validation rows (:func:`validation_rows`): the probes (scaler, C, weights, operating
        points) see the fit rows only, the validation AUCs are what choices between runs are
        made on, and the test split is scored once."""
        from sklearn.preprocessing import StandardScaler

        cfg, e = self.cfg, self.cfg.eval
        degraded = degraded or {}
        tasks, test_y = test.tasks, test.labels
        h, w = cfg.data.image_size
        columns = list(range(len(tasks)))
        held_out = validation_rows(train.studies, train.labels, e.val_fraction)
        fit, val = train.rows(~held_out), train.rows(held_out)
        logger.info(
            "eval: probes fitted on %d train samples, %d held out for validation (%d studies), "
            "%d test samples",
            len(fit.labels),
            len(val.labels),
            len(np.unique(val.studies)),
            len(test_y),
        )
        results: dict[str, ModelResult] = {}
        test_scores: dict[str, np.ndarray] = {}
        robust: dict[str, dict[str, dict[int, DegradedResult]]] = {}
        zero_shot: dict[str, ZeroShotResult] = {}
        heads: dict[str, TaskHeads] = {}
        zs_columns = [tasks.index(t) for t in prompts.tasks] if prompts else []
        latency = self.latency(models)
        for m in models:
            t0 = time.perf_counter()
            scaler = StandardScaler().fit(l2_normalize(fit.features[m.name]))
            xfit = scaler.transform(l2_normalize(fit.features[m.name]))
            probes = [
                fit_probe(xfit, fit.labels[:, j], e.probe_cs, e.cv_folds, cfg.run.seed, fit.studies)
                for j in columns
            ]
            scores = test_scores[m.name] = apply_probes(probes, scaler, test.features[m.name])
            heads[m.name] = TaskHeads.from_probes(
                m.name,
                tasks,
                scaler,
                probes,
                fit.labels,
                test_y,
                scores,
                cv_folds=e.cv_folds,
                seed=cfg.run.seed,
                target_sensitivity=e.operating_sensitivity,
                prompts=prompts,
                val_samples=len(val.labels),
            )
            aucs = aucs_by_task(test_y, scores, tasks, columns)
            val_aucs = (
                aucs_by_task(
                    val.labels, apply_probes(probes, scaler, val.features[m.name]), tasks, columns
                )
                if len(val.labels)
                else {}
            )
            roc = {}
            for j, task in enumerate(tasks):
                fpr, tpr = roc_points(test_y[:, j], scores[:, j])
                roc[task] = Roc([float(v) for v in fpr], [float(v) for v in tpr])
            ci = (
                bootstrap_intervals(test_y, scores, e.bootstrap, e.confidence, cfg.run.seed)
                if e.bootstrap
                else {}
            )
            clean_mean = mean_finite(aucs)
            results[m.name] = ModelResult(
                kind=m.kind,
                arch=m.arch,
                auc=aucs,
                auc_mean=clean_mean,
                ci={"mean": _pair(ci.get("mean"))}
                | {t: _pair(ci.get(str(j))) for j, t in enumerate(tasks)},
                probe_c={task: float(probes[j].c) for j, task in enumerate(tasks)},
                params=int(m.params),
                latency_ms={p: ms[m.name] for p, ms in latency.items()},
                roc=roc,
                resizes_to=m.resizes_to,
                val_auc=val_aucs,
                val_auc_mean=mean_finite(val_aucs) if val_aucs else None,
                **m.info,
            )
            if prompts:
                zs = zero_shot_scores(test.features[m.name], prompts.positive, prompts.negative)
                zs_aucs = aucs_by_task(test_y, zs, prompts.tasks, zs_columns)
                zero_shot[m.name] = ZeroShotResult(zs_aucs, mean_finite(zs_aucs))
            for (name, severity), feats in degraded.items():
                d_aucs = aucs_by_task(
                    test_y, apply_probes(probes, scaler, feats[m.name]), tasks, columns
                )
                zs_result = None
                if prompts:
                    zs = zero_shot_scores(feats[m.name], prompts.positive, prompts.negative)
                    zs_aucs = aucs_by_task(test_y, zs, prompts.tasks, zs_columns)
                    zs_result = ZeroShotResult(zs_aucs, mean_finite(zs_aucs))
                robust.setdefault(m.name, {}).setdefault(name, {})[severity] = DegradedResult(
                    auc=d_aucs,
                    auc_mean=mean_finite(d_aucs),
                    drop=mean_finite(d_aucs) - clean_mean,
                    zero_shot=zs_result,
                )
            logger.info(
                "eval: %s mean AUC %.3f (validation %s, %.0f s)",
                m.name,
                clean_mean,
                "-" if not val_aucs else f"{mean_finite(val_aucs):.3f}",
                time.perf_counter() - t0,
            )
        reference = results.get("teacher")
        if reference is not None:
            for name, r in results.items():
                r.speedup = {p: reference.latency_ms[p] / ms for p, ms in r.latency_ms.items()}
                if r.kind == "student":
                    r.vs_teacher = self.paired(
                        test_y, tasks, test_scores[name], test_scores["teacher"]
                    )
        report = EvalReport(
            tasks=tasks,
            samples=Samples(
                train=int(len(fit.labels)), val=int(len(val.labels)), test=int(len(test_y))
            ),
            image_size=(h, w),
            latency=LatencySetup(
                batch=e.latency_batch,
                threads=e.latency_threads,
                device="cpu",
                precisions=list(e.latency_precisions),
            ),
            bootstrap=BootstrapSetup(resamples=e.bootstrap, confidence=e.confidence),
            models=results,
        )
        if degraded:
            report.degrade = Degrade(
                corruptions=list(dict.fromkeys(name for name, _ in degraded)),
                severities=list(dict.fromkeys(s for _, s in degraded)),
                seed=cfg.run.seed,
                models=robust,
            )
        if prompts:
            report.zero_shot = ZeroShot(
                tasks=prompts.tasks,
                prompts=dict(prompts.texts),
                models=zero_shot,
            )
        self.write(report, heads)
        return report

    def paired(
        self, y: np.ndarray, tasks: list[str], scores: np.ndarray, reference: np.ndarray
    ) -> dict[str, Paired]:
        """{task and "mean": the test AUC of ``scores`` minus the teacher's (``reference``), with
        a paired BCa interval (:func:`paired_intervals`, the same resamples as every other
        interval of this eval; none when eval.bootstrap is 0)}."""
        e = self.cfg.eval
        if e.bootstrap:
            delta, ci = paired_intervals(
                y, scores, reference, e.bootstrap, e.confidence, self.cfg.run.seed
            )
        else:
            columns = list(range(len(tasks)))
            a = aucs_by_task(y, scores, tasks, columns)
            b = aucs_by_task(y, reference, tasks, columns)
            delta = np.array([a[t] - b[t] for t in tasks] + [mean_finite(a) - mean_finite(b)])
            ci = {}
        keys = [*map(str, range(len(tasks))), "mean"]
        return {
            name: Paired(float(d), _pair(ci.get(k)))
            for name, k, d in zip([*tasks, "mean"], keys, delta, strict=True)
        }

    def latency(self, models: list[EvalModel]) -> dict[str, dict[str, float]]:
        """Median CPU latency (ms) of every model in every eval.latency_precisions entry, all
        timed alike at data.image_size: {precision: {model: ms}}."""
        e = self.cfg.eval
        h, w = self.cfg.data.image_size
        for m in models:
            m.module.to("cpu")
        try:
            return latency_by_precision(
                {m.name: m.timed for m in models},
                (e.latency_batch, 3, h, w),
                e.latency_precisions,
                e.latency_iters,
                e.latency_threads,
                self.backend.memory_format,
            )
        finally:
            for m in models:
                m.module.to(self.device)

    def write(self, report: EvalReport, heads: dict[str, TaskHeads] | None = None) -> None:
        """heads/<model>.json + .safetensors of every model, config.yaml, the TensorBoard
        scalars, then report.json, which marks the stage finished and so is written last."""
        self.out.mkdir(parents=True, exist_ok=True)
        if heads:
            for name, h in heads.items():
                h.save(self.out / "heads", name)
            logger.info(
                "eval: probes and operating points of %d models in %s (<model>.json + "
                ".safetensors)",
                len(heads),
                self.out / "heads",
            )
        write_text(self.out / "config.yaml", dump_yaml(self.cfg))
        tb = TBLogger(self.out / "tb", self.cfg.logging.tensorboard)
        try:
            for name, r in report.models.items():
                values = {f"eval/{name}/auc_{t}": v for t, v in r.auc.items()}
                values[f"eval/{name}/auc_mean"] = r.auc_mean
                values.update({f"eval/{name}/latency_ms_{p}": v for p, v in r.latency_ms.items()})
                zs = report.zero_shot.models.get(name) if report.zero_shot else None
                if zs is not None:
                    values.update({f"eval/{name}/zero_shot_auc_{t}": v for t, v in zs.auc.items()})
                    values[f"eval/{name}/zero_shot_auc_mean"] = zs.auc_mean
                tb.scalars(values, 0)
            # Severity as the step: TensorBoard draws mean AUC against severity.
            for corruption, curves in report.robustness_curves().items():
                for name, points in curves.items():
                    for severity, auc in points:
                        tb.scalars({f"eval/{name}/{corruption}/auc_mean": auc}, int(severity))
        finally:
            tb.close()
        if self.render is not None:
            self.render(self.out, report, tensorboard=self.cfg.logging.tensorboard)
        # Last: the marker of a finished eval, so a failure above leaves the stage unfinished.
        report.save(self.out / "report.json")


def _pair(value: object) -> tuple[float, float] | None:
    """A bootstrap interval as a (lo, hi) pair of floats, None when there is none."""
    if value is None:
        return None
    lo, hi = value  # type: ignore[misc]
    return float(lo), float(hi)

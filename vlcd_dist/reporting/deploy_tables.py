"""The deployment section of ``vlcd report``, from the package's deployment.json
(:mod:`vlcd_dist.deploy.record`): accuracy and size, CPU latency, and per-task fp32 vs int8 AUC,
each a table built once for report.md and the HTML page, with notes whose figures are computed
from the record (the verdict on int8, the speed and size ratios, the checks against PyTorch)."""

from __future__ import annotations

import math
from pathlib import Path

from vlcd_dist.deploy.record import MEAN, RUNTIMES, SIZE_KEYS, DeployedModel, DeploymentReport
from vlcd_dist.evaluation.results import EvalReport, Interval
from vlcd_dist.reporting.document import Block, Heading, Note, TableBlock
from vlcd_dist.reporting.tables import DASH, Table, change, finite, fmt

RUNTIME_LABELS = {"eager": "eager", "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX int8"}
MB = 1e6
"""Sizes are shown in MB of 10^6 bytes."""
EVAL_MISMATCH = 5e-4
"""A model's eval mean AUC in deployment.json farther than this from the run's report.json
means the package came from another eval."""


def _interval(ci: Interval | None) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci is not None and all(map(finite, ci)) else DASH


def _ratio(value: float) -> str:
    return f"{value:.1f}x" if finite(value) else DASH


def _level(record: DeploymentReport) -> int:
    return int(round(record.bootstrap.confidence * 100))


def accuracy_table(record: DeploymentReport) -> Table:
    """Per model (students, then the teacher): mean test AUC of the eval, ONNX fp32 and ONNX
    int8 with their intervals, the int8 change, and the size on disk of each format."""
    level = _level(record)
    header = [
        "model",
        "params (M)",
        "mean AUC eval",
        "mean AUC ONNX fp32",
        f"fp32 {level}% CI",
        "mean AUC ONNX int8",
        f"int8 {level}% CI",
        "int8 − fp32",
        "size PyTorch (MB)",
        "size ONNX fp32 (MB)",
        "size ONNX int8 (MB)",
    ]
    short = ["model", "params (M)", "eval", "ONNX fp32", f"{level}% CI", "ONNX int8"]
    short += [f"{level}% CI", "int8 − fp32", "PyTorch", "ONNX fp32", "ONNX int8"]
    rows, values = [], []
    for name, m in record.ordered():
        a, s = m.auc, m.size_bytes
        rows.append(
            [
                name,
                fmt(m.params / 1e6, 1),
                fmt(a.eval[MEAN]),
                fmt(a.fp32[MEAN]),
                _interval(m.ci.fp32[MEAN]),
                fmt(a.int8[MEAN]),
                _interval(m.ci.int8[MEAN]),
                change(m.int8_change()),
                *(fmt(b / MB, 1) for b in (s.pytorch, s.onnx_fp32, s.onnx_int8)),
            ]
        )
        if m.kind == "student":  # the teacher is the reference, not a contender
            values.append([None, None, a.eval[MEAN], a.fp32[MEAN], None, a.int8[MEAN]])
        else:
            values.append([None] * 6)
    table = Table(
        header,
        rows,
        numeric=set(range(1, len(header))),
        code={0},
        groups=[("", 2), ("mean test AUC", 6), ("size on disk (MB)", 3)],
        short_header=short,
    )
    table.bold_best((2, 3, 5), values)
    return table


def latency_table(record: DeploymentReport) -> Table:
    """Per model: CPU latency at batch 1 of each runtime at each thread count, and how many
    times faster int8 runs than ONNX fp32."""
    header, short, groups = ["model"], ["model"], [("", 1)]
    for t in record.latency.threads:
        threads = _threads([t])
        header += [f"{threads} {RUNTIME_LABELS[r]} (ms)" for r in RUNTIMES]
        header.append(f"{threads} int8 speed-up vs fp32")
        short += [f"{RUNTIME_LABELS[r]} (ms)" for r in RUNTIMES] + ["int8 speed-up"]
        groups.append((threads, len(RUNTIMES) + 1))
    rows = []
    for name, m in record.ordered():
        row = [name]
        for t in record.latency.threads:
            ms = m.latency_ms[t]
            row += [fmt(ms[r], 1) for r in RUNTIMES]
            row.append(_ratio(ms["onnx_fp32"] / ms["onnx_int8"] if ms["onnx_int8"] else math.nan))
        rows.append(row)
    return Table(
        header,
        rows,
        numeric=set(range(1, len(header))),
        code={0},
        groups=groups,
        short_header=short,
    )


def per_task_table(record: DeploymentReport) -> Table:
    """Per model three rows (ONNX fp32, ONNX int8, int8 minus fp32) of test AUC per task and
    the mean: narrow however many models there are."""
    header = ["model", "test AUC", *record.tasks, "mean"]
    keys = [*record.tasks, MEAN]
    rows = []
    for name, m in record.ordered():
        rows.append([name, "ONNX fp32", *(fmt(m.auc.fp32[k]) for k in keys)])
        rows.append(["", "ONNX int8", *(fmt(m.auc.int8[k]) for k in keys)])
        rows.append(["", "int8 − fp32", *(change(m.int8_change(k)) for k in keys)])
    # A rule above each model's rows in HTML: the model name shows on its first row only.
    breaks = set(range(3, len(rows), 3))
    return Table(header, rows, numeric=set(range(2, len(header))), code={0}, breaks=breaks)


# ---------------------------------------------------------------------------------------------
# Notes computed from the figures


def _judged(record: DeploymentReport) -> tuple[str, list[tuple[str, DeployedModel]]]:
    """The models the verdict speaks of: the students, or every model when none is a student."""
    students = [(n, m) for n, m in record.ordered() if m.kind == "student"]
    return ("student", students) if students else ("model", record.ordered())


def int8_verdict(record: DeploymentReport) -> str:
    """Whether int8 keeps the AUC, from the figures: the largest drop of a mean AUC (judged
    against the fp32 bootstrap interval when there is one) and of one task's AUC."""
    noun, models = _judged(record)
    level = _level(record)
    means = [(m.int8_change(), n, m) for n, m in models if finite(m.int8_change())]
    if not means:
        return f"Int8 vs fp32: no {noun} has a finite mean AUC in both precisions to compare."
    worst, worst_name, worst_model = min(means, key=lambda x: x[0])
    below = [
        (n, m)
        for _, n, m in means
        if m.ci.fp32[MEAN] is not None and m.auc.int8[MEAN] < m.ci.fp32[MEAN][0]
    ]
    has_ci = all(m.ci.fp32[MEAN] is not None for _, _, m in means)
    if round(worst, 3) >= 0:
        best = max(c for c, _, _ in means)
        text = (
            f"Int8 keeps the AUC: no {noun}'s mean test AUC is lower in int8 than in fp32 "
            f"(changes {change(worst)} to {change(best)})."
        )
    elif below:
        listed = "; ".join(
            f"{n} drops by {-m.int8_change():.3f} to {fmt(m.auc.int8[MEAN])}, below its fp32 "
            f"{level}% interval {_interval(m.ci.fp32[MEAN])}"
            for n, m in below
        )
        text = f"Int8 does not keep the AUC of every {noun}: {listed}."
    elif has_ci:
        text = (
            f"Int8 keeps the AUC within the bootstrap intervals: the largest drop of a {noun}'s "
            f"mean test AUC is {-worst:.3f} ({worst_name}, {fmt(worst_model.auc.fp32[MEAN])} to "
            f"{fmt(worst_model.auc.int8[MEAN])}), inside its fp32 {level}% interval "
            f"{_interval(worst_model.ci.fp32[MEAN])}."
        )
    else:
        text = (
            f"The largest drop of a {noun}'s mean test AUC in int8 is {-worst:.3f} ({worst_name}); "
            "no bootstrap intervals were computed to judge it against."
        )
    tasks = [
        (m.int8_change(t), n, t)
        for n, m in models
        for t in record.tasks
        if finite(m.int8_change(t))
    ]
    if tasks:
        drop, name, task = min(tasks)
        if round(drop, 3) < 0:
            text += f" The largest drop on one task: {-drop:.3f} ({name}, {task})."
        else:
            text += " No task's AUC is lower in int8."
    return text


def _threads(counts: list[int]) -> str:
    """ "1 thread", "4 threads", "1 and 4 threads", "1, 2 and 4 threads"."""
    names = [str(t) for t in counts]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} thread" + ("" if counts == [1] else "s")


def _span(values: list[float]) -> str:
    """ "1.8x" or "1.8x–2.6x" over the finite values."""
    good = sorted(v for v in values if finite(v))
    if not good:
        return DASH
    low, high = _ratio(good[0]), _ratio(good[-1])
    return low if low == high else f"{low}–{high}"


def speed_and_size_note(record: DeploymentReport) -> str:
    """How much faster and smaller int8 is, over the judged models."""
    noun, models = _judged(record)
    parts = []
    for t in record.latency.threads:
        lat = [m.latency_ms[t] for _, m in models]
        vs_fp32 = _span([ms["onnx_fp32"] / ms["onnx_int8"] for ms in lat if ms["onnx_int8"]])
        vs_eager = _span([ms["eager"] / ms["onnx_int8"] for ms in lat if ms["onnx_int8"]])
        parts.append(
            f"at {_threads([t])}, ONNX int8 runs at {vs_fp32} the speed of ONNX fp32 and "
            f"{vs_eager} that of eager PyTorch"
        )
    sizes = [m.size_bytes for _, m in models]
    smaller = _span([s.onnx_fp32 / s.onnx_int8 for s in sizes if s.onnx_int8])
    plural = f"{noun}s" if len(models) != 1 else noun
    return (
        f"Across the {plural}: " + "; ".join(parts) + f"; model.int8.onnx is {smaller} smaller "
        "than model.onnx on disk."
    )


def setup_note(record: DeploymentReport, source: Path) -> str:
    """What the figures are and how they were measured."""
    lat, boot = record.latency, record.bootstrap
    h, w = record.image_size
    threads = _threads(lat.threads)
    interval = (
        f"; the intervals are a bootstrap over test samples ({boot.resamples} resamples, "
        f"{_level(record)}%)"
        if boot.resamples
        else "; no bootstrap intervals (resamples 0)"
    )
    return (
        f"From {source}, written by vlcd package. Latency: a batch of {lat.batch} at {threads} "
        f"on {lat.cpu} ({lat.cores} cores), {lat.iters} timed iterations per runtime; "
        "eager PyTorch, ONNX Runtime fp32 (model.onnx) and ONNX Runtime int8 "
        "(model.int8.onnx, static quantization) measured side by side in one run. AUC: test "
        f"AUC-ROC of each ONNX model through the eval's probes on the test split "
        f"({record.test_samples} samples, {h}x{w} px){interval}; eval: the eval's own figure "
        "from the PyTorch features. Size on disk in MB (10^6 bytes): model.safetensors "
        "(PyTorch, timm format), model.onnx, model.int8.onnx. Students first; the teacher, "
        "last, is the reference. Bold: the best student of each AUC column."
    )


def checks_note(record: DeploymentReport) -> str:
    """The ONNX models against PyTorch and the eval, and whether timm alone rebuilds them."""
    models = list(record.models.values())
    fp32 = max(m.verify.fp32_max_diff for m in models)
    prob = max(m.verify.int8_max_probability_diff for m in models)
    cosine = min(m.verify.int8_min_embedding_cosine for m in models)
    # The students only: the eval ran the teacher under its own autocast (bf16 in the paper's
    # recipe), the package's tower in fp32, so the teacher's gap measures that choice too.
    gaps = [
        abs(m.auc.fp32[k] - m.auc.eval[k])
        for m in models
        if m.kind == "student"
        for k in [*record.tasks, MEAN]
        if finite(m.auc.fp32[k]) and finite(m.auc.eval[k])
    ]
    text = (
        f"Checked against PyTorch on sample images (worst over the models): ONNX fp32 outputs "
        f"within {fp32:.1e}; int8 probabilities within {prob:.3f}, embedding cosine at least "
        f"{cosine:.4f}."
    )
    if gaps:
        text += (
            f" ONNX fp32 reproduces the eval's test AUCs of the students within {max(gaps):.4f}."
        )
    not_plain = [(n, m.timm.note) for n, m in record.models.items() if not m.timm.plain]
    if not_plain:
        text += " Not rebuilt by plain timm: " + "; ".join(
            f"{n} ({note})" if note else n for n, note in not_plain
        )
        text += "."
    else:
        text += " Every tower rebuilds in plain timm from its folder."
    return text


def eval_mismatch(record: DeploymentReport, report: EvalReport) -> str | None:
    """A warning when the package's eval figures are not this run's report.json (the package
    is older than the eval, or from another one); None when they agree."""
    differ = [
        f"{name} {fmt(m.auc.eval[MEAN])} in deployment.json, {fmt(report.models[name].auc_mean)} "
        "in report.json"
        for name, m in record.models.items()
        if name in report.models
        and finite(m.auc.eval[MEAN])
        and abs(m.auc.eval[MEAN] - report.models[name].auc_mean) > EVAL_MISMATCH
    ]
    missing = [n for n in record.models if n not in report.models]
    if not differ and not missing:
        return None
    parts = differ + ([f"{', '.join(missing)} not in report.json"] if missing else [])
    return (
        "Caution: the package was not made from this run's eval (mean AUC eval: "
        + "; ".join(parts)
        + "). Rerun vlcd package to measure the current models."
    )


def deployment_blocks(
    record: DeploymentReport, source: Path, report: EvalReport | None = None
) -> list[Block]:
    """The deployment section: the verdict on int8, the three tables, the setup and the checks;
    a caution first when ``report`` (the run's eval) disagrees with the package."""
    blocks: list[Block] = []
    if report is not None:
        warning = eval_mismatch(record, report)
        if warning is not None:
            blocks.append(Note(warning))
    blocks += [
        Note(int8_verdict(record)),
        Note(speed_and_size_note(record)),
        Heading("Accuracy and size on disk"),
        TableBlock(accuracy_table(record)),
        Heading(f"CPU latency at batch {record.latency.batch}"),
        TableBlock(latency_table(record)),
        Heading("Test AUC per task: ONNX fp32 vs int8"),
        TableBlock(per_task_table(record)),
        Note(setup_note(record, source)),
        Note(checks_note(record)),
    ]
    return blocks


def deployment_scalars(record: DeploymentReport) -> dict[str, float]:
    """The section's figures as TensorBoard scalars (step 0), tagged ``deploy/<model>/...``."""
    out: dict[str, float] = {}
    for name, m in record.models.items():
        tag = f"deploy/{name}"
        for source, aucs in (("eval", m.auc.eval), ("fp32", m.auc.fp32), ("int8", m.auc.int8)):
            out[f"{tag}/auc_mean_{source}"] = aucs[MEAN]
            if source != "eval":
                out.update({f"{tag}/auc_{t}_{source}": aucs[t] for t in record.tasks})
        for key in SIZE_KEYS:
            out[f"{tag}/size_mb_{key}"] = getattr(m.size_bytes, key) / MB
        for t, ms in m.latency_ms.items():
            out.update({f"{tag}/latency_ms_{r}_{t}threads": ms[r] for r in RUNTIMES})
    return out

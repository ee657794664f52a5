"""The tables and notes of one eval report, built once for report.md (``vlcd eval``) and the
HTML page (``vlcd report``): linear probes, the paired comparison of each student with the
teacher, robustness per corruption, zero-shot and prompts."""

from __future__ import annotations

from vlcd_dist.evaluation.results import EvalReport, Paired
from vlcd_dist.reporting.document import Block, Heading, Note, TableBlock
from vlcd_dist.reporting.tables import DASH, Table, change, finite, fmt


def eval_table(report: EvalReport) -> Table:
    """Model x task AUC, the mean with its interval, the gap to the teacher, size and speed."""
    tasks = report.tasks
    level = int(round(report.bootstrap.confidence * 100))
    precisions = report.latency.precisions
    header = [
        "model",
        *tasks,
        "mean AUC",
        f"{level}% CI",
        "val AUC",
        "Δ vs teacher",
        "params (M)",
    ]
    for p in precisions:
        header += [f"latency {p} (ms)", f"speed-up {p}"]
    rows, values = [], []
    for name, r in report.models.items():
        ci = r.ci.get("mean")
        delta = r.delta_vs_teacher
        aucs = [r.auc[t] for t in tasks]
        rows.append(
            [
                name,
                *(fmt(v) for v in aucs),
                fmt(r.auc_mean),
                f"{ci[0]:.3f}–{ci[1]:.3f}" if ci is not None and all(map(finite, ci)) else DASH,
                fmt(r.val_auc_mean),
                DASH if delta is None or r.kind == "teacher" else f"{delta:+.3f}",
                fmt(r.params / 1e6, 1),
                *(
                    cell
                    for p in precisions
                    for cell in (fmt(r.latency_ms.get(p), 1), _times(r.speedup.get(p)))
                ),
            ]
        )
        values.append([None, *aucs, r.auc_mean])
    table = Table(header, rows, numeric=set(range(1, len(header))), code={0})
    table.bold_best(range(1, 2 + len(tasks)), values)
    return table


def paired_table(report: EvalReport) -> Table | None:
    """Task (and the mean) x student: test AUC minus the teacher's with its paired interval,
    ticked where the student matches the teacher (the interval contains 0 or lies above it),
    and a last row counting the tasks it matches on; None without a teacher. Tasks are rows so
    that the table stays as wide as the students are many."""
    students = {n: r for n, r in report.models.items() if r.vs_teacher}
    if not students:
        return None
    tasks = report.tasks
    rows = [[t, *(_paired_cell(r.vs_teacher.get(t)) for r in students.values())] for t in tasks]
    rows.append(["mean", *(_paired_cell(r.vs_teacher.get("mean")) for r in students.values())])
    counts = []
    for r in students.values():
        known = [r.vs_teacher[t].matches for t in tasks if t in r.vs_teacher]
        known = [v for v in known if v is not None]
        counts.append(f"{sum(known)}/{len(known)} tasks" if known else DASH)
    rows.append(["matches on", *counts])
    table = Table(["task", *students], rows, numeric=set(range(1, len(students) + 1)))
    table.breaks = {len(tasks)}
    return table


def _paired_cell(p: Paired | None) -> str:
    """'-0.012 [-0.041, +0.018] ✓': the difference, its interval, a tick when it matches."""
    if p is None or not finite(p.delta):
        return DASH
    text = f"{p.delta:+.3f}"
    if p.ci is not None and all(map(finite, p.ci)):
        text += f" [{p.ci[0]:+.3f}, {p.ci[1]:+.3f}]"
    return text + (" ✓" if p.matches else "")


def paired_blocks(report: EvalReport) -> list[Block]:
    """The paired comparison with the teacher and what it means."""
    table = paired_table(report)
    if table is None:
        return []
    boot = report.bootstrap
    level = int(round(boot.confidence * 100))
    how = (
        f"its {level}% paired BCa bootstrap interval ({boot.resamples} resamples of the test "
        "rows, each scoring the student and the teacher on the same rows)"
        if boot.resamples
        else "no interval (eval.bootstrap is 0)"
    )
    return [
        TableBlock(table),
        Note(
            "Each cell: the student's test AUC minus the teacher's, with "
            f"{how}. ✓: the student matches the teacher there, i.e. the interval contains 0 or "
            "lies above it; without ✓ the student is worse than the teacher beyond the "
            "resampling noise of this test split."
        ),
    ]


def _times(speedup: float | None) -> str:
    return f"{speedup:.1f}x" if finite(speedup) else DASH


def eval_notes(report: EvalReport) -> str:
    """One paragraph on what the numbers of :func:`eval_table` are."""
    s, lat, boot = report.samples, report.latency, report.bootstrap
    h, w = report.image_size
    interval = (
        f"; the interval is a BCa bootstrap over test samples ({boot.resamples} resamples)"
        if boot.resamples
        else ""
    )
    resized = ", ".join(
        f"{name} to {r.resizes_to[0]}x{r.resizes_to[1]}"
        for name, r in report.models.items()
        if r.resizes_to is not None
    )
    val = (
        f", {s.val} validation samples held out of train by study: val AUC, the mean AUC on "
        "them, is what runs are chosen on; the test split is scored once"
        if s.val
        else ""
    )
    return (
        "Test AUC-ROC of logistic-regression probes on frozen, L2-normalised image features "
        f"({s.train} train / {s.test} test samples, {h}x{w} px{val}){interval}. Latency: median "
        f"{lat.device.upper()} forward of a batch of {lat.batch} with {lat.threads} thread(s), "
        f"every model timed in each precision alike ({_precisions(lat.precisions)}) and each "
        "speed-up taken within one precision; the teacher's is its image tower's."
        + (f" Resized inside the model, and timed so: {resized}." if resized else "")
        + " Bold: the best value of each AUC column."
    )


def _precisions(precisions: list[str]) -> str:
    return ", ".join("fp32" if p == "fp32" else f"{p} under autocast" for p in precisions)


def robustness_tables(report: EvalReport) -> list[tuple[str, Table]]:
    """Per corruption: model x severity mean AUC, with its change from the clean AUC."""
    if report.degrade is None:
        return []
    d = report.degrade
    out = []
    for corruption in d.corruptions:
        header = ["model", "clean", *(f"severity {s}" for s in d.severities)]
        rows, values = [], []
        for name, r in report.models.items():
            row, vals = [name, fmt(r.auc_mean)], [None, r.auc_mean]
            by_severity = d.models.get(name, {}).get(corruption, {})
            for s in d.severities:
                e = by_severity.get(s)
                mean = e.auc_mean if e is not None else None
                text = fmt(mean)
                if finite(mean) and finite(r.auc_mean):
                    text += f" ({change(mean - r.auc_mean)})"  # type: ignore[operator]
                row.append(text)
                vals.append(mean)
            rows.append(row)
            values.append(vals)
        table = Table(header, rows, numeric=set(range(1, len(header))), code={0})
        table.bold_best(range(1, len(header)), values)
        out.append((corruption, table))
    return out


def robustness_blocks(report: EvalReport) -> list[Block]:
    """What the robustness study is, then a table per corruption."""
    if report.degrade is None:
        return []
    blocks: list[Block] = [
        Note(
            f"The test split again under {report.degrade.description()}: test images corrupted "
            "after decoding, scored by the probes fitted on clean training images. Each cell: "
            "mean test AUC (change from clean)."
        )
    ]
    for corruption, table in robustness_tables(report):
        blocks += [Heading(f"Robustness: {corruption}"), TableBlock(table)]
    return blocks


def zero_shot_tables(report: EvalReport) -> tuple[Table, Table] | None:
    """(AUC: model x prompted task, zero-shot / linear probe, and the means; prompts: task,
    positive prompts, negative prompts), or None without zero-shot prompts."""
    z = report.zero_shot
    if z is None or not z.models:
        return None
    header = ["model", *z.tasks, "mean"]
    rows, values = [], []
    for name, zs in z.models.items():
        probe = report.models[name]
        finite_probe = [probe.auc[t] for t in z.tasks if finite(probe.auc[t])]
        probe_mean = sum(finite_probe) / len(finite_probe) if finite_probe else None
        cells = [f"{fmt(zs.auc[t])} / {fmt(probe.auc[t])}" for t in z.tasks]
        rows.append([name, *cells, f"{fmt(zs.auc_mean)} / {fmt(probe_mean)}"])
        values.append([None, *(zs.auc[t] for t in z.tasks), zs.auc_mean])
    auc = Table(header, rows, numeric=set(range(1, len(header))), code={0})
    auc.bold_best(range(1, len(header)), values)
    prompts = Table(
        ["task", "positive prompts", "negative prompts"],
        [[t, *(_quoted(side) for side in sides)] for t, sides in z.prompts.items()],
        code={0},
    )
    return auc, prompts


def _quoted(prompts: list[str]) -> str:
    """A side's prompts in one cell: each quoted (prompts may hold commas), "; " between."""
    return "; ".join(f'"{p}"' for p in prompts)


def zero_shot_blocks(report: EvalReport) -> list[Block]:
    pair = zero_shot_tables(report)
    if pair is None:
        return []
    auc, prompts = pair
    return [
        Note(
            "No probe: an image's score for a task is cos(z, positive) - cos(z, negative), where "
            "positive and negative are the task's prompts embedded by the teacher's text tower, "
            "each side's prompts averaged (prompt ensembling), and z is the model's image "
            "embedding (students share the teacher's embedding space). Each cell: zero-shot test "
            "AUC-ROC / the linear probe's; bold: the best zero-shot AUC."
        ),
        TableBlock(auc),
        Heading("Prompts"),
        TableBlock(prompts),
    ]


def eval_blocks(report: EvalReport) -> list[Block]:
    """report.md of ``vlcd eval``: the probe table, then robustness and zero-shot when run."""
    blocks: list[Block] = [TableBlock(eval_table(report)), Note(eval_notes(report))]
    paired = paired_blocks(report)
    if paired:
        blocks += [Heading("Students vs teacher (paired)"), *paired]
    blocks += robustness_blocks(report)
    zero_shot = zero_shot_blocks(report)
    if zero_shot:
        blocks += [Heading("Zero-shot"), *zero_shot]
    return blocks

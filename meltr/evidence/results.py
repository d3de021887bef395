"""The results of a comparison: one row per run, a table per method with the seed spread, the gain
over a baseline method with a paired t-test, a Wilcoxon signed-rank test and a bootstrap
confidence interval (``meltr.evidence.stats``), and a plot.

Each run's numbers come from its ``results.json`` (written by the training loop from the
evaluations it logged to ``metrics.jsonl``): the selection metric and the test metrics of the
selected checkpoint (``best/...``) and of the last one (``last/...``), and the seconds its training
steps took (``time/step_seconds``, of which ``time/meta_seconds`` in meta steps).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from meltr.evidence.stats import (
    BOOTSTRAP_METHOD,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    PairedComparison,
    Summary,
    paired_comparison,
    summarize,
)

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class RunResult:
    """One finished run: its selection metric (``selection``, e.g. ``val/t2v_R@1``, and whether
    higher is better) and its metrics, keyed ``best/<test metric>``, ``last/<test metric>``,
    ``selection/value``, ``best_step`` and, for runs whose report has them, ``time/step_seconds``
    and ``time/meta_seconds``."""

    method: str
    seed: int
    selection: str
    higher_is_better: bool
    metrics: dict[str, float]


def read_run(method: str, seed: int, run_dir: Path) -> RunResult:
    """The ``RunResult`` of the finished run in ``run_dir`` (from its ``results.json``)."""
    report = json.loads((run_dir / "results.json").read_text())
    selection = report["selection"]
    metrics = {"selection/value": selection["best_value"], "best_step": selection["best_step"]}
    for which in ("best", "last"):
        metrics |= {
            f"{which}/{key}": value for key, value in report[which].items() if key != "step"
        }
    metrics |= {f"time/{key}": value for key, value in report.get("time", {}).items()}
    return RunResult(method, seed, selection["metric"], selection["higher_is_better"], metrics)


def headline_metric(results: Sequence[RunResult]) -> str:
    """``best/test/<m>`` for the selection metric ``<split>/<m>``: the test score of the selected
    checkpoint on the metric the selection used."""
    selection = results[0].selection
    return "best/test/" + selection.split("/", 1)[1]


def write_csv(results: Sequence[RunResult], path: Path) -> None:
    """One row per run: method, seed, selection metric, then every metric (sorted names)."""
    columns = sorted({key for result in results for key in result.metrics})
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "seed", "selection", *columns])
        for result in results:
            values = [result.metrics.get(column, "") for column in columns]
            writer.writerow([result.method, result.seed, result.selection, *values])


@dataclass(frozen=True)
class MethodRow:
    """A method's line of the table: its values of ``metric``, one per seed in seed order, and,
    for methods other than the baseline, the paired comparison with it over the seeds both
    have."""

    method: str
    values: tuple[float, ...]
    versus_baseline: PairedComparison | None

    @property
    def summary(self) -> Summary:
        return summarize(self.values)


def method_rows(results: Sequence[RunResult], metric: str, baseline: str | None) -> list[MethodRow]:
    """The table's rows for ``metric``, methods in their first-appearance order."""
    by_method: dict[str, dict[int, float]] = {}
    for result in results:
        if metric in result.metrics and result.metrics[metric] is not None:
            by_method.setdefault(result.method, {})[result.seed] = result.metrics[metric]
    reference = by_method.get(baseline) if baseline is not None else None
    rows = []
    for method, values in by_method.items():
        test = None
        if reference is not None and method != baseline:
            common = sorted(set(values) & set(reference))
            if common:
                test = paired_comparison(
                    [values[s] for s in common], [reference[s] for s in common]
                )
        rows.append(MethodRow(method, tuple(values[s] for s in sorted(values)), test))
    return rows


def verdict(test: PairedComparison, higher_is_better: bool | None, baseline: str) -> str:
    """A plain statement of ``test``'s t-test (method minus baseline over common seeds): better
    or worse when the metric's direction is known (``higher_is_better``), higher or lower when
    it is None."""
    if test.n < 2:
        return f"one common seed with {baseline}: no test"
    if higher_is_better is None:
        direction = "higher" if test.mean_difference > 0 else "lower"
    else:
        direction = "better" if (test.mean_difference > 0) == higher_is_better else "worse"
    if test.mean_difference == 0:
        return f"equal to {baseline} on every seed"
    if test.p < SIGNIFICANCE:
        return f"{direction} than {baseline} (p = {test.p:.3f} < {SIGNIFICANCE})"
    return f"not distinguishable from {baseline} (p = {test.p:.2f})"


def markdown_table(
    results: Sequence[RunResult],
    metric: str,
    baseline: str | None,
    higher_is_better: bool | None = None,
) -> str:
    """The markdown table of ``metric`` per method: n, mean, std, min, max, and against
    ``baseline``: the gain (mean paired difference ± its standard error), its bootstrap
    confidence interval, the paired t-test's verdict and p (better or worse when
    ``higher_is_better`` gives the metric's direction, higher or lower when it is None) and
    the Wilcoxon signed-rank p."""
    level = f"{100 * CONFIDENCE:g} %"
    lines = [
        "| method | seeds | mean | std | min | max | gain over "
        + (baseline or "baseline")
        + f" | {level} CI of the gain | paired t-test | Wilcoxon p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in method_rows(results, metric, baseline):
        s, test = row.summary, row.versus_baseline
        if test is None:
            gain, interval, wilcoxon = "-", "-", "-"
            statement = "(baseline)" if row.method == baseline else "-"
        else:
            error = "" if math.isnan(test.standard_error) else f" ± {test.standard_error:.2f}"
            gain = f"{test.mean_difference:+.2f}{error}"
            interval = (
                "-" if math.isnan(test.ci_low) else f"[{test.ci_low:+.2f}, {test.ci_high:+.2f}]"
            )
            wilcoxon = "-" if math.isnan(test.wilcoxon_p) else f"{test.wilcoxon_p:.3g}"
            statement = verdict(test, higher_is_better, baseline)
        lines.append(
            f"| {row.method} | {s.n} | {s.mean:.2f} | {s.std:.2f} | {s.min:.2f} | {s.max:.2f} "
            f"| {gain} | {interval} | {statement} | {wilcoxon} |"
        )
    return "\n".join(lines)


def time_table(results: Sequence[RunResult], baseline: str | None) -> str:
    """The markdown table of each method's training time per run (``time/step_seconds``): mean
    ± sample std over seeds, the share spent in meta steps, and the mean time relative to
    ``baseline``'s. Empty when no run reports its time."""
    seconds = method_rows(results, "time/step_seconds", None)
    if not seconds:
        return ""
    meta = {row.method: row.summary.mean for row in method_rows(results, "time/meta_seconds", None)}
    reference = next((row.summary.mean for row in seconds if row.method == baseline), None)
    lines = [
        f"| method | seeds | s per run | meta steps (%) | vs {baseline or 'baseline'} |",
        "|---|---|---|---|---|",
    ]
    for row in seconds:
        s = row.summary
        std = "" if s.n < 2 else f" ± {s.std:.1f}"
        share = f"{100 * meta[row.method] / s.mean:.1f}" if row.method in meta and s.mean else "-"
        relative = f"{100 * (s.mean / reference - 1):+.1f} %" if reference else "-"
        lines.append(f"| {row.method} | {s.n} | {s.mean:.1f}{std} | {share} | {relative} |")
    return "\n".join(lines)


def write_markdown(
    results: Sequence[RunResult],
    path: Path,
    metric: str,
    baseline: str | None,
    command: str,
    failed: Sequence[str] = (),
) -> None:
    """``results.md``: the headline table for ``metric`` and for the same metric of the last
    checkpoint, the training time per run, a table per other ``best/test/`` metric (item counts
    aside), the command, and the runs that failed."""
    direction = "higher" if results[0].higher_is_better else "lower"
    sections = [
        f"# Comparison: {metric} ({direction} is better)",
        f"Selection: each run's checkpoint with the best `{results[0].selection}`; its test "
        "score is reported. Mean, sample std, min and max over seeds; the gain is the mean of "
        "the per-seed differences to the baseline (same seed), ± its standard error, with its "
        f"{100 * CONFIDENCE:g} % bootstrap confidence interval ({BOOTSTRAP_METHOD}, "
        f"{BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}), tested with a two-sided "
        "paired t-test (the verdict) and a two-sided Wilcoxon signed-rank test (zero "
        "differences dropped; exact for up to 13 seeds). All from scipy.stats.",
        markdown_table(results, metric, baseline, results[0].higher_is_better),
    ]
    last = "last/" + metric.removeprefix("best/")
    if metric.startswith("best/") and any(last in r.metrics for r in results):
        sections += [
            f"## {last}: the last checkpoint instead of the selected one",
            markdown_table(results, last, baseline, results[0].higher_is_better),
        ]
    times = time_table(results, baseline)
    if times:
        sections += [
            "## Training time per run",
            "Wall seconds of the training steps (evaluation, checkpoints and batch loading left "
            "out), mean ± sample std over seeds; the share of it in meta steps; the mean relative "
            "to the baseline's. Runs that shared the machine with other work vary with its load.",
            times,
        ]
    others = sorted(
        {
            key
            for r in results
            for key in r.metrics
            if key.startswith("best/test/") and not key.startswith("best/test/num_")
        }
        - {metric}
    )
    for other in others:
        sections += [f"## {other}", markdown_table(results, other, baseline)]
    sections += ["## Command", f"```\n{command}\n```"]
    if failed:
        sections += ["## Runs that did not finish", "\n".join(f"- {name}" for name in failed)]
    path.write_text("\n\n".join(sections) + "\n")


def plot(results: Sequence[RunResult], path: Path, metric: str) -> None:
    """``metric`` per method: one dot per seed, the mean as a bar with ± std error bars."""
    rows = method_rows(results, metric, None)
    figure = Figure(figsize=(1.3 * len(rows) + 2, 3.5), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for position, row in enumerate(rows):
        axes.bar(position, row.summary.mean, color="#9ecae1", width=0.6)
        axes.errorbar(position, row.summary.mean, yerr=row.summary.std, color="black", capsize=4)
        axes.scatter([position] * len(row.values), row.values, color="#08519c", zorder=3, s=14)
    axes.set_xticks(range(len(rows)), [row.method for row in rows], rotation=20)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}: mean ± std over seeds, dots = seeds")
    figure.savefig(path, dpi=120)

"""Tables and plots for comparisons: ``metrics.csv``, ``comparison.md``, PNG curves, scaling.

Plots use matplotlib's ``Figure`` API directly (Agg canvas, no ``pyplot`` state), so they work
headless and never change the user's backend.
"""

from __future__ import annotations

import csv
from pathlib import Path

ACCOUNTING_NOTE = (
    "Wall-clock is training time only: it excludes compilation (each scanned chunk is compiled "
    "ahead of time; compile time is listed separately) and the periodic evaluation. Forward "
    "passes count per-example network evaluations: population size × batch size per ES "
    "generation, and 3 × batch size per gradient step (the backward pass counted as 2 forward "
    "passes). Test loss is the cross-entropy for every method, whatever loss it trains on. Time "
    "to target is the first evaluation at or above the target accuracy, so it is resolved to "
    "the evaluation interval. Gradient-free methods are evaluated at their search "
    "mean where they have one, otherwise at their best member so far."
)


def time_to_target(history: list[dict], target: float) -> dict | None:
    """The first evaluation row with ``test_accuracy >= target`` (``step``, ``wall_clock_s``,
    ``forward_passes``), or ``None`` if none reached it."""
    for row in history:
        if row["test_accuracy"] >= target:
            return {k: row[k] for k in ("step", "wall_clock_s", "forward_passes")}
    return None


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """One row per evaluation: step, wall_clock_s, forward_passes, then the metrics."""
    path.parent.mkdir(parents=True, exist_ok=True)
    first = ["step", "wall_clock_s", "forward_passes"]
    names = first + sorted({k for row in history for k in row} - set(first))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(history)


def _count(value: float) -> str:
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def summary_table(summaries: list[dict], target: float) -> str:
    """A Markdown table: one row per method with accuracy, loss, time, passes and target."""
    header = (
        "| method | kind | params | steps | test acc | test loss | wall-clock (s) | compile (s) "
        f"| forward passes | time to {target:.0%} (s) | steps to {target:.0%} "
        f"| passes to {target:.0%} |"
    )
    lines = [header, "|" + "---|" * 12]
    for s in summaries:
        hit = s["target"]
        lines.append(
            f"| {s['label']} | {s['kind']} | {s['num_params']:,} | {s['steps']:,} "
            f"| {s['final_test_accuracy']:.2%} | {s['final_test_loss']:.3f} "
            f"| {s['wall_clock_s']:.2f} | {s['compile_s']:.1f} | {_count(s['forward_passes'])} "
            + (
                "| not reached | – | – |"
                if hit is None
                else f"| {hit['wall_clock_s']:.2f} | {hit['step']:,} "
                f"| {_count(hit['forward_passes'])} |"
            )
        )
    return "\n".join(lines)


def write_comparison_md(path: Path, context: dict, summaries: list[dict]) -> None:
    """``comparison.md``: setup, the summary table, per-method details, accounting, plots."""
    target = context["target_accuracy"]
    model = context["model"]
    lines = [
        f"# {context['name']}",
        "",
        f"Task: {context['task']} ({context['num_train']} train / {context['num_test']} test). "
        f"Model: MLP hidden={model['hidden']} activation={model['activation']} "
        f"({model['api']}); every method starts from the same parameters (seed "
        f"{context['seed']}). Target test accuracy: {target:.0%}.",
        "",
        summary_table(summaries, target),
        "",
        "| method | how | loss | activation | batch | forward passes / step | best test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['label']} | {s['description']} | {s['loss']} | {s['activation']} "
            f"| {s['batch_size']} | {s['forward_passes_per_step']:,} "
            f"| {s['best_test_accuracy']:.2%} |"
        )
    lines += [
        "",
        ACCOUNTING_NOTE,
        "",
        "![test accuracy vs wall-clock](accuracy_vs_wall_clock.png)",
        "",
        "![test accuracy vs forward passes](accuracy_vs_forward_passes.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def _figure(width: float = 6.4, height: float = 4.4, columns: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height), layout="constrained")
    return figure, figure.subplots(1, columns)


def plot_accuracy(summaries: list[dict], run_dir: Path, target: float) -> list[Path]:
    """``accuracy_vs_wall_clock.png`` and ``accuracy_vs_forward_passes.png`` (one line per
    method, log x axis since methods differ by orders of magnitude; the target dotted)."""
    paths = []
    for x_key, x_label, filename in (
        ("wall_clock_s", "training wall-clock (s, compile excluded)", "accuracy_vs_wall_clock"),
        ("forward_passes", "forward passes (backward = 2 forwards)", "accuracy_vs_forward_passes"),
    ):
        figure, axes = _figure()
        for s in summaries:
            rows = [r for r in s["history"] if r[x_key] > 0]
            style = "-" if s["kind"] == "gradient-free" else "--"
            axes.plot(
                [r[x_key] for r in rows],
                [r["test_accuracy"] for r in rows],
                style,
                marker=".",
                label=s["label"],
            )
        axes.axhline(target, color="grey", linestyle=":", label=f"target {target:.0%}")
        axes.set_xscale("log")
        axes.set_xlabel(x_label)
        axes.set_ylabel("test accuracy")
        axes.set_ylim(0.0, 1.0)
        axes.grid(alpha=0.3)
        axes.legend()
        path = run_dir / f"{filename}.png"
        figure.savefig(path, dpi=120)
        paths.append(path)
    return paths


SCALING_COLUMNS = (
    "label",
    "hidden",
    "num_params",
    "reached",
    "steps_to_target",
    "forward_passes_to_target",
    "seconds_to_target",
    "steps_run",
    "best_test_accuracy",
)


def write_scaling(run_dir: Path, rows: list[dict], target: float) -> None:
    """``scaling.csv``, ``scaling.md`` and ``scaling.png`` (steps, forward passes and training
    seconds to the target accuracy vs parameter count, log-log, one line per method)."""
    with (run_dir / "scaling.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SCALING_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Scaling: cost to {target:.0%} test accuracy vs parameter count",
        "",
        "| method | hidden | params | steps to target | forward passes to target "
        "| seconds to target | best test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        missing = f"not reached in {r['steps_run']:,}"
        lines.append(
            f"| {r['label']} | {r['hidden']} | {r['num_params']:,} | "
            + (
                f"{missing} | – | – "
                if not r["reached"]
                else f"{r['steps_to_target']:,} | {_count(r['forward_passes_to_target'])} "
                f"| {r['seconds_to_target']:.2f} "
            )
            + f"| {r['best_test_accuracy']:.2%} |"
        )
    lines += ["", ACCOUNTING_NOTE, "", "![scaling](scaling.png)", ""]
    (run_dir / "scaling.md").write_text("\n".join(lines))

    figure, all_axes = _figure(width=5.0, columns=3)
    panels = (
        ("steps_to_target", "steps"),
        ("forward_passes_to_target", "forward passes"),
        ("seconds_to_target", "training seconds"),
    )
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label and r["reached"]]
        for axes, (key, _) in zip(all_axes, panels, strict=True):
            # Log axes need positive values: a target met at step 0 has no cost to plot.
            points = [(r["num_params"], r[key]) for r in mine if r[key] > 0]
            axes.plot([p for p, _ in points], [v for _, v in points], "o-", label=label)
    for axes, (_, name) in zip(all_axes, panels, strict=True):
        if any(len(line.get_xdata()) for line in axes.get_lines()):
            axes.set_xscale("log")
            axes.set_yscale("log")
        else:
            axes.text(0.5, 0.5, "no run reached the target", ha="center", transform=axes.transAxes)
        axes.set_xlabel("parameters")
        axes.set_ylabel(f"{name} to {target:.0%} test accuracy")
        axes.grid(alpha=0.3, which="both")
        axes.legend()
    figure.savefig(run_dir / "scaling.png", dpi=120)


__all__ = [
    "ACCOUNTING_NOTE",
    "SCALING_COLUMNS",
    "plot_accuracy",
    "summary_table",
    "time_to_target",
    "write_comparison_md",
    "write_metrics_csv",
    "write_scaling",
]

"""Tables and plots for comparisons: ``metrics.csv``, ``comparison.md``, PNG curves, scaling.

Plots use matplotlib's ``Figure`` API directly (Agg canvas, no ``pyplot`` state), so they work
headless and never change the user's backend.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from pathlib import Path

from esjax.experiments.outputs import replace_text, write_metrics_csv

ACCOUNTING_NOTE = (
    "Wall-clock is training time only: it excludes compilation (each scanned chunk is compiled "
    "ahead of time; compile time is listed separately) and the periodic evaluation. Forward "
    "passes count per-example network evaluations: a gradient-free method's counted fitness "
    "evaluations × the examples each member is scored on (population size × batch size per "
    "generation for most strategies), and 3 × batch size per gradient step (the backward pass "
    "counted as 2 forward passes). Test loss is the cross-entropy for every method, whatever "
    "loss it trains on. Time "
    "to target is the first evaluation at or above the target accuracy, so it is resolved to "
    "the evaluation interval. Gradient-free methods are evaluated at their search "
    "mean where they have one, otherwise at their best member so far."
)
COUNTED_NOTE = (
    "A gradient-free method's forward passes are its strategy's own count of fitness "
    "evaluations (state.evaluations; for Nelder-Mead the points its sequential rule would have "
    "evaluated, not the speculative rows it asks for in parallel) × the examples each member "
    "is scored on; ELM's are one pass per training example, spent once."
)


def time_to_target(history: list[dict], target: float) -> dict | None:
    """The first evaluation row with ``test_accuracy >= target`` (``step``, ``wall_clock_s``,
    ``forward_passes``), or ``None`` if none reached it."""
    for row in history:
        if row["test_accuracy"] >= target:
            return {k: row[k] for k in ("step", "wall_clock_s", "forward_passes")}
    return None


def model_description(model: dict, detail: bool = False) -> str:
    """``MLP (hidden [32])`` for the built-in model, the class reference for one of your own;
    ``detail`` adds the activation and API of the MLP."""
    if "class" in model:
        return f"model {model['class']}"
    text = f"MLP (hidden {model.get('hidden')})"
    if detail:
        text += f", activation {model.get('activation')} ({model.get('api')})"
    return text


def _count(value: float) -> str:
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _budget(s: dict) -> str:
    steps = f"{s['steps']:,}" if isinstance(s["steps"], int) else f"{s['steps']:.1f}"
    return steps + ("" if s.get("own_budget", True) else " (shared)")


def seeds_table(summaries: list[dict], target: float, reference: str | None = None) -> str:
    """A Markdown table of multi-seed summaries (:func:`esjax.experiments.compare
    .aggregate_seeds`): test accuracy as mean ± sample std (min–max), mean forward passes,
    wall-clock and cost to the target; with ``reference`` (a label), the reference's forward
    passes to each method's mean final accuracy and the ratio. Skipped methods keep a row."""
    ref = next((s for s in summaries if s["label"] == reference and "skipped" not in s), None)
    header = (
        "| method | kind | steps (budget) | test acc mean ± std (min–max) | forward passes "
        f"| wall-clock (s) | compile (s) | seeds to {target:.0%} "
        f"| passes to {target:.0%} (mean curve) "
    )
    columns = 9
    if ref is not None:
        header += f"| {reference} passes to the same acc | passes ÷ {reference}'s "
        columns += 2
    lines = [header + "|", "|" + "---|" * columns]
    for s in summaries:
        if "skipped" in s:
            lines.append(
                f"| {s['label']} | {s['kind']} | not run | {s['skipped']} "
                + "| – " * (columns - 4)
                + "|"
            )
            continue
        hit = s["target"]
        seeds = s.get("seeds", [None])
        row = (
            f"| {s['label']} | {s['kind']} | {_budget(s)} "
            f"| {s['final_test_accuracy']:.2%} ± {s.get('test_accuracy_std', 0.0):.2%} "
            f"({s.get('test_accuracy_min', s['final_test_accuracy']):.1%}–"
            f"{s.get('test_accuracy_max', s['final_test_accuracy']):.1%}) "
            f"| {_count(s['forward_passes'])} | {s['wall_clock_s']:.2f} | {s['compile_s']:.1f} "
            f"| {s.get('seeds_reaching_target', int(hit is not None))}/{len(seeds)} "
            f"| {'not reached' if hit is None else _count(hit['forward_passes'])} "
        )
        if ref is not None:
            same = passes_to_accuracy(ref["history"], s["final_test_accuracy"])
            if s is ref:
                row += "| – | – "
            elif same is None:
                row += "| never | – "
            elif same == 0:
                row += "| at start | – "
            else:
                row += f"| {_count(same)} | {s['forward_passes'] / max(same, 1):.3g}× "
        lines.append(row + "|")
    return "\n".join(lines)


def passes_to_accuracy(history: list[dict], accuracy: float) -> float | None:
    """Forward passes at the first evaluation row with ``test_accuracy >= accuracy``."""
    for row in history:
        if row["test_accuracy"] >= accuracy:
            return row["forward_passes"]
    return None


def summary_table(summaries: list[dict], target: float) -> str:
    """A Markdown table: one row per method with accuracy, loss, time, passes and target
    (:func:`seeds_table` when the summaries hold several seeds or skipped methods)."""
    if any("seeds" in s or "skipped" in s for s in summaries):
        return seeds_table(summaries, target)
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
    """``comparison.md``: setup, the summary table, per-method details, accounting, plots
    (and the answer paragraph when ``context`` holds one)."""
    target = context["target_accuracy"]
    model = context["model"]
    held_out = "validation" if context.get("evaluated_on") == "validation" else "test"
    multi = any("seeds" in s or "skipped" in s for s in summaries)
    seeds = context.get("seeds")
    start = (
        f"every method starts from the same parameters (seed {context['seed']})"
        if seeds is None
        else f"{len(seeds)} seeds {seeds}; within a seed every method starts from the same "
        "parameters. Accuracies are mean ± sample standard deviation (min–max) over seeds; "
        "passes and wall-clock are means"
    )
    lines = [
        f"# {context['name']}",
        "",
        f"Task: {context['task']} ({context['num_train']} train / {context['num_test']} "
        f"{held_out}). Model: {model_description(model, detail=True)}; {start}. "
        f"Target {held_out} accuracy: {target:.0%}."
        + (
            ""
            if "forward_pass_budget" not in context
            else f" Shared budget: {context['forward_pass_budget']:,} forward passes per method "
            "(steps marked 'shared'; the others have their own, stated in their rows)."
        ),
        "",
    ]
    if context.get("answer"):
        lines += ["## Answer", "", context["answer"], ""]
    reference = (context.get("answer_reference") or "adam") if multi else None
    lines += [
        seeds_table(summaries, target, reference) if multi else summary_table(summaries, target),
        "",
        "| method | how | loss | activation | scored on | forward passes / step | best test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        if "skipped" in s:
            lines.append(f"| {s['label']} | {s['description']} | – | – | – | – | – |")
            continue
        lines.append(
            f"| {s['label']} | {s['description']} | {s['loss']} | {s['activation']} "
            f"| {s.get('evaluation') or s['batch_size']} | {s['forward_passes_per_step']:,} "
            f"| {s['best_test_accuracy']:.2%} |"
        )
    lines += [
        "",
        ACCOUNTING_NOTE,
        "",
        COUNTED_NOTE,
        "",
        "![test accuracy vs wall-clock](accuracy_vs_wall_clock.png)",
        "",
        "![test accuracy vs forward passes](accuracy_vs_forward_passes.png)",
        "",
    ]
    replace_text(path, "\n".join(lines))


def _acc(s: dict) -> str:
    spread = s.get("test_accuracy_std")
    return f"{s['final_test_accuracy']:.1%}" + ("" if spread is None else f" ± {spread:.1%}")


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def answer_paragraph(summaries: list[dict], context: dict, reference: str) -> str:
    """The study's answer, written from its numbers: which methods reached which accuracy at
    which cost, and each one's ratio to the ``reference`` method (its forward passes divided by
    the forward passes the reference needed to reach the same mean accuracy)."""
    held_out = "validation" if context.get("evaluated_on") == "validation" else "test"
    target = context["target_accuracy"]
    ran = [s for s in summaries if "skipped" not in s]
    ref = next((s for s in ran if s["label"] == reference), None)
    if ref is None:
        return f"No answer: the reference method {reference!r} did not run."
    free = sorted(
        (s for s in ran if s["kind"] == "gradient-free"),
        key=lambda s: s["final_test_accuracy"],
        reverse=True,
    )
    seeds = context.get("seeds") or [context.get("seed")]
    budget = context.get("forward_pass_budget")
    params = ref["num_params"]
    parts = [
        f"On {context['task']}, a {params:,}-parameter {model_description(context['model'])} "
        f"was trained by {len(ran)} methods from the same initial parameters per seed, "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} each"
        + (
            f", every gradient-free method with the same {_count(budget)} forward passes unless "
            "its row says otherwise"
            if budget
            else ""
        )
        + f". {reference} reached {_acc(ref)} {held_out} accuracy with "
        f"{_count(ref['forward_passes'])} forward passes in {ref['wall_clock_s']:.1f} s"
        + (
            ""
            if ref["target"] is None
            else f" (its mean curve crossed {target:.0%} after "
            f"{_count(ref['target']['forward_passes'])})"
        )
        + "."
    ]

    def ratio(s: dict) -> str:
        same = passes_to_accuracy(ref["history"], s["final_test_accuracy"])
        if same is None:
            return f"{reference} never reached that accuracy"
        if same == 0:
            return f"no better than {reference}'s starting point"
        return (
            f"{s['forward_passes'] / max(same, 1):.3g}× the forward passes {reference} needed for "
            "the same accuracy"
        )

    if free:
        best = free[:3]
        parts.append(
            "The best gradient-free methods were "
            + "; ".join(
                f"{s['label']} {_acc(s)} ({_count(s['forward_passes'])} passes, "
                f"{s['wall_clock_s']:.1f} s: {ratio(s)})"
                for s in best
            )
            + "."
        )
        reached = [s["label"] for s in free if s["final_test_accuracy"] >= target]
        parts.append(
            f"{len(reached)} of {len(free)} gradient-free methods ended at or above {target:.0%}"
            + (f" ({_names(reached)})" if reached else "")
            + f"; the worst, {free[-1]['label']}, ended at {_acc(free[-1])}."
        )
        subset = [s for s in free if str(s.get("evaluation", "")).startswith("fixed subset")]
        if subset:
            parts.append(
                f"The methods scored on one fixed subset ({_names([s['label'] for s in subset])}) "
                f"ended between {subset[-1]['final_test_accuracy']:.1%} ({subset[-1]['label']}) "
                f"and {subset[0]['final_test_accuracy']:.1%} ({subset[0]['label']})."
            )
        stalled = [
            s["label"]
            for s in free
            if s["history"] and s["final_test_accuracy"] - s["history"][0]["test_accuracy"] < 0.05
        ]
        if stalled:
            parts.append(f"{_names(stalled)} moved less than 5 points from its start.")
        simplex = [s for s in free if str(s.get("description", "")).startswith("nelder_mead")]
        for s in simplex:
            evaluations = s["forward_passes"] / max(s["batch_size"], 1)
            parts.append(
                f"{s['label']} spent {params + 1:,} of its {evaluations:,.0f} counted evaluations "
                "on its initial simplex alone (n + 1 points)."
            )
    own = [s["label"] for s in free if s.get("own_budget", True)]
    if budget and own:
        parts.append(f"With a budget of their own (see their rows): {_names(own)}.")
    for s in ran:
        if s["kind"] == "least-squares readout":
            parts.append(
                f"{s['label']} (a least-squares readout of the random hidden layer) reached "
                f"{_acc(s)} with {_count(s['forward_passes'])} forward passes ({ratio(s)})."
            )
    skipped = [s for s in summaries if "skipped" in s]
    if skipped:
        parts.append(
            "Not run: " + "; ".join(f"{s['label']} ({s['skipped']})" for s in skipped) + "."
        )
    if free:
        works = [s["label"] for s in free if s["final_test_accuracy"] >= target]
        partly = [s["label"] for s in free if 0.5 <= s["final_test_accuracy"] < target]
        fails = [s["label"] for s in free if s["final_test_accuracy"] < 0.5]
        lowest = min((s["final_test_accuracy"] for s in free if s["label"] in works), default=0.0)
        gap = ref["final_test_accuracy"] - lowest
        verdict = [
            f"works for {_names(works)} (at or above {target:.0%}, within {gap:.1%} of {reference})"
            if works
            else "",
            f"half works for {_names(partly)} (50% to {target:.0%})" if partly else "",
            f"fails for {_names(fails)} (below 50%)" if fails else "",
        ]
        parts.append(
            f"So at {params:,} parameters and this budget, gradient-free training "
            + "; ".join(v for v in verdict if v)
            + "."
        )
    return " ".join(parts)


def _figure(width: float = 6.4, height: float = 4.4, columns: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height), layout="constrained")
    return figure, figure.subplots(1, columns)


# One colour per method name wherever it is drawn (CLI plots, notebooks), whatever subset of
# methods a figure shows: matplotlib's tab10 order, then tab20's light tones.
METHOD_COLOURS = {
    "adam": "#d62728",
    "sgd": "#ff9896",
    "openai_es": "#1f77b4",
    "cma_es": "#ff7f0e",
    "sep_cma_es": "#2ca02c",
    "simulated_annealing": "#9467bd",
    "pso": "#8c564b",
    "eki": "#e377c2",
    "pgpe": "#17becf",
    "snes": "#bcbd22",
    "xnes": "#7f7f7f",
    "simple_ga": "#aec7e8",
    "differential_evolution": "#ffbb78",
    "nelder_mead": "#98df8a",
    "lm_ma_es": "#c5b0d5",
    "random_search": "#c49c94",
    "hill_climbing": "#f7b6d2",
    "low_rank_es": "#9edae5",
    "elm": "#dbdb8d",
}
X_AXES = {
    "wall_clock_s": ("training wall-clock (s, compile excluded)", "accuracy_vs_wall_clock"),
    "forward_passes": (
        "forward passes (a backward pass = 2 forwards)",
        "accuracy_vs_forward_passes",
    ),
}


# Labels that are not a method name (variants such as ``adam_zero_one``) take a colour from
# matplotlib's tab20b by a hash of the label: fixed, whatever else a figure draws.
EXTRA_COLOURS = (
    "#393b79", "#5254a3", "#6b6ecf", "#9c9ede", "#637939", "#8ca252", "#b5cf6b", "#cedb9c",
    "#8c6d31", "#bd9e39", "#e7ba52", "#e7cb94", "#843c39", "#ad494a", "#d6616b", "#e7969c",
    "#7b4173", "#a55194", "#ce6dbd", "#de9ed6",
)  # fmt: skip


def method_colour(label: str) -> str:
    """The colour of a method label: its own for a method name (``adam``, ``openai_es``, ...),
    otherwise a fixed colour hashed from the label, so it never depends on which other methods
    a figure draws."""
    if label in METHOD_COLOURS:
        return METHOD_COLOURS[label]
    return EXTRA_COLOURS[zlib.crc32(label.encode()) % len(EXTRA_COLOURS)]


def machine_description() -> str:
    """``"cpu, 2 cores"`` or the accelerator kind: what a figure's title says it ran on."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU, {os.cpu_count()} cores"
    return f"{device.device_kind} × {jax.device_count()}"


def accuracy_figure(summaries: list[dict], x_key: str, target: float, title: str = ""):
    """Test accuracy against ``x_key`` (``wall_clock_s`` or ``forward_passes``): a full 0-1 panel
    and a zoomed panel of the test error ``1 − accuracy`` on a log axis, where methods that
    crowd near the top separate. Solid lines are gradient-free methods, dashed ones gradient
    methods, dotted the ELM baseline; step 0 is drawn at the left edge of the symlog x axis."""
    from matplotlib.lines import Line2D

    x_label, _ = X_AXES[x_key]
    figure, (full, zoom) = _figure(width=6.0, height=4.4, columns=2)
    smallest = min((r[x_key] for s in summaries for r in s["history"] if r[x_key] > 0), default=1.0)
    for s in summaries:
        rows = s["history"]
        style = {"gradient-free": "-", "gradient": "--"}.get(s["kind"], ":")
        xs = [r[x_key] for r in rows]
        colour = method_colour(s["label"])
        full.plot(
            xs,
            [r["test_accuracy"] for r in rows],
            style,
            marker=".",
            color=colour,
            label=s["label"],
        )
        errors = [max(1.0 - r["test_accuracy"], 1e-4) for r in rows]
        zoom.plot(xs, errors, style, marker=".", color=colour)
    for axes in (full, zoom):
        axes.set_xscale("symlog", linthresh=smallest)  # keeps x = 0 (the shared start) visible
        axes.set_xlim(left=0)
        axes.set_xlabel(x_label)
        axes.grid(alpha=0.3)
    full.axhline(target, color="grey", linestyle=":")
    full.set_ylim(0.0, 1.0)
    full.set_ylabel("test accuracy")
    zoom.axhline(1.0 - target, color="grey", linestyle=":")
    zoom.set_yscale("log")
    zoom.set_ylabel("test error (1 − accuracy), log scale")
    handles, _ = full.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="black", linestyle="-", label="solid: gradient-free"),
        Line2D([], [], color="black", linestyle="--", label="dashed: gradient (backprop)"),
        Line2D([], [], color="black", linestyle=":", label="dotted: least-squares readout (ELM)"),
        Line2D([], [], color="grey", linestyle=":", label=f"target {target:.0%}"),
    ]
    full.legend(handles=handles, fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_accuracy(
    summaries: list[dict], run_dir: Path, target: float, context: dict | None = None
) -> list[Path]:
    """``accuracy_vs_wall_clock.png`` and ``accuracy_vs_forward_passes.png``
    (:func:`accuracy_figure`), titled with the task, the model size and the machine."""
    title = ""
    if context is not None:
        sizes = {s.get("num_params") for s in summaries} - {None}
        model = model_description(context.get("model", {}))
        if len(sizes) == 1:
            model += f", {sizes.pop():,} parameters"
        title = f"{context.get('task', '')}: {model} · {machine_description()}"
    paths = []
    for x_key, (_, filename) in X_AXES.items():
        figure = accuracy_figure(summaries, x_key, target, title)
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
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=SCALING_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    replace_text(run_dir / "scaling.csv", table.getvalue())
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
    replace_text(run_dir / "scaling.md", "\n".join(lines))

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
    "model_description",
    "ACCOUNTING_NOTE",
    "COUNTED_NOTE",
    "answer_paragraph",
    "passes_to_accuracy",
    "seeds_table",
    "SCALING_COLUMNS",
    "EXTRA_COLOURS",
    "METHOD_COLOURS",
    "X_AXES",
    "accuracy_figure",
    "machine_description",
    "method_colour",
    "plot_accuracy",
    "summary_table",
    "time_to_target",
    "write_comparison_md",
    "write_metrics_csv",
    "write_scaling",
]

"""Gradient-free vs gradient on the same Flax model: ``esjax compare CONFIG.yaml``.

A comparison config names one task, one model and several methods; every method starts from the
same initial parameters, trains on the same split with the same minibatch size and sampler, and
is measured by the same loop (:func:`esjax.baselines.timed_run`)::

    name: digits_compare
    seed: 0
    task: {name: digits, seed: 1}          # or {name: mnist, path: ~/data/mnist}
    model: {hidden: [32], activation: tanh, api: linen}
    loss: cross_entropy                    # cross_entropy | mse | zero_one (| softmax_residual
                                           #   | output_residual: vectors, for EKI only)
    batch_size: 256                        # examples per generation / per step
    eval_every: 50                         # steps between test evaluations
    target_accuracy: 0.95
    methods:
      - label: openai_es                   # a gradient-free method: any registered strategy
        strategy: {name: openai_es, population_size: 256, sigma: 0.05}
        generations: 1000
      - label: adam                        # a gradient method: any optax optimizer
        optimizer: {name: adam, learning_rate: 0.003}
        steps: 1000

A method may override ``loss``, ``batch_size``, ``eval_every`` and ``activation`` (e.g. the
straight-through variant of a step-activation network; the forward pass is unchanged), and a
gradient-free one may set ``population_batch_size`` (evaluate the population in chunks).

Outputs in ``<output_dir>/<name>/``: ``<label>/metrics.csv`` and ``<label>/summary.json`` per
method, ``summary.json``, ``comparison.md``, ``accuracy_vs_wall_clock.png`` and
``accuracy_vs_forward_passes.png``. With ``checkpoint_every: K`` (or ``--checkpoint-every K``) each
method's state is also checkpointed to ``<label>/checkpoint.msgpack`` every K steps (at evaluation
boundaries), and ``esjax compare CONFIG --resume`` continues a killed comparison: finished methods
are not rerun, the interrupted one continues from its checkpoint, and every accuracy, loss and
final state equals the uninterrupted run's.

A config with a ``scaling: {hidden: [[16], [64], ...]}`` section is a scaling study instead: every
method runs once per hidden-layer configuration (stopping at the target accuracy unless
``stop_at_target: false``) and the outputs are ``scaling/<label>_hidden_<widths>/metrics.csv``,
``scaling.csv``, ``scaling.md`` and ``scaling.png`` (steps and forward passes to the target
against the parameter count), plus ``summary.json``.

Keys: the model's initial parameters use ``fold_in(seed_key, 0)``, a strategy's ``init``
``fold_in(seed_key, 1)`` and every method's run ``fold_in(seed_key, 2)``; since gradient step
``t`` and ES generation ``t`` derive their minibatch key alike, they see the same examples.

Forward passes are counted from what a method spent: for a gradient-free method the strategy's
own evaluation count (``state.evaluations``, which for Nelder-Mead is what its sequential rule
would have evaluated, not the speculative rows it asks for) times the examples each member is
scored on; ``3 ×`` the batch per gradient step; the training set once for ELM.

Study keys (all optional; a config without them runs exactly as above):

- ``seeds: [0, 1, 2]`` (instead of ``seed``): every method runs once per seed, each seed from its
  own initial parameters (shared by all methods of that seed). Per-seed outputs go to
  ``<label>/seed_<s>/``; the method's row in ``comparison.md``, the CLI table and
  ``summary.json`` gives the mean, the sample standard deviation and the range over seeds, and
  the plots draw the mean curves. A method's seeds share one compiled step (compile time is
  paid by the first seed). ``load_comparison(path, seeds=[0])`` overrides the list.
- ``forward_pass_budget: N``: a method without ``generations``/``steps`` gets
  ``N // (forward passes per step)`` of them, so every such method spends the same budget to
  within one step's worth (gradient methods too, a backprop counting as 3). A strategy that
  counts its evaluations as it goes (Nelder-Mead) needs its own ``generations``. Methods with
  their own budget say so in their row.
- ``fitness_subset: K`` (per method, or top-level as the default of every gradient-free method
  without ``batch_size``; ``null`` turns it off): members are scored on one fixed subset of
  ``K`` training examples, drawn once by a permutation under ``fold_in(key(first seed), 3)``
  and shared by every method and seed, instead of a fresh minibatch each generation. Meant for
  methods that compare fitness across generations (annealing, swarms, simplex, GA, DE, hill
  climbing), which minibatch noise corrupts. A method cannot set both it and ``batch_size``.
- ``validation: {fraction: 0.2, seed: 0}``: hold a stratified ``fraction`` of the training split
  out and report on it instead of the test split (the test split is not used at all): for
  tuning hyperparameters. Tables then say "validation" and ``summary.json`` records it.
- ``skip: "reason"`` (per method): the method is listed in the tables and ``summary.json`` with
  the reason, and not run (e.g. a strategy whose one generation costs minutes at this size).
- ``answer: {reference: adam}``: an answer paragraph generated from the numbers (which methods
  reached which accuracy at which cost, and their ratio to the reference method) is written to
  ``comparison.md`` and ``summary.json`` (``answer``;
  :func:`esjax.experiments.report.answer_paragraph`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax

from esjax import checkpoint, lowrank, nn
from esjax.base import check_int
from esjax.baselines import (
    BACKWARD_COST_IN_FORWARDS,
    classifier_metrics,
    elm_trainer,
    optax_trainer,
    timed_run,
)
from esjax.experiments import models, report, schema
from esjax.experiments.config import (
    RESIDUAL_STRATEGIES,
    SEED_RANGE,
    build_optimizer,
    build_strategy,
    select_methods,
    validate_strategy_section,
)
from esjax.experiments.outputs import check_run_name, claim_run_dir, read_yaml, write_json
from esjax.tasks.supervised import Dataset, load_dataset, split_indices

METHOD_KEYS = (
    "label",
    "strategy",
    "optimizer",
    "elm",
    "generations",
    "steps",
    "loss",
    "batch_size",
    "eval_every",
    "activation",
    "population_batch_size",
    "fitness_subset",
    "skip",
)


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """One method of a comparison.

    Attributes:
      label: its name in tables, plots and the output folder.
      strategy: a strategy section (gradient-free), or None.
      optimizer: an optax optimizer section (gradient), or None.
      elm: an extreme-learning-machine section (``{ridge: λ}``: the model's hidden layers keep
        their random initial weights, the output layer is solved by ridge least squares on the
        training set; :func:`esjax.baselines.elm_readout`), or None.
      steps: generations or optimizer steps (None: from the comparison's forward-pass budget,
        resolved by :func:`resolve_steps`).
      loss, batch_size, eval_every, activation: overrides of the comparison's defaults.
      population_batch_size: evaluate the population this many members at a time.
      fitness_subset: score members on this many fixed training examples (None: minibatches).
      skip: a reason not to run this method (it is listed with the reason), or None.
      own_budget: whether ``steps`` was set by the method rather than by the shared budget.
    """

    label: str
    strategy: dict | None
    optimizer: dict | None
    steps: int | None
    loss: str
    batch_size: int | None
    eval_every: int
    activation: str
    population_batch_size: int | None = None
    elm: dict | None = None
    fitness_subset: int | None = None
    skip: str | None = None
    own_budget: bool = True

    @property
    def gradient_free(self) -> bool:
        return self.strategy is not None

    @property
    def kind(self) -> str:
        if self.elm is not None:
            return "least-squares readout"
        return "gradient-free" if self.gradient_free else "gradient"


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
    """A validated comparison (see the module docstring for the YAML layout)."""

    name: str
    seed: int
    task: dict
    model: dict
    methods: tuple[MethodConfig, ...]
    target_accuracy: float
    stop_at_target: bool
    output_dir: str
    scaling: dict | None
    raw: dict
    checkpoint_every: int | None = None
    seeds: tuple[int, ...] | None = None
    forward_pass_budget: int | None = None
    validation: dict | None = None
    answer: dict | None = None

    @property
    def run_seeds(self) -> tuple[int, ...]:
        """The seeds every method runs with (``(seed,)`` without a ``seeds`` list)."""
        return self.seeds if self.seeds is not None else (self.seed,)


TOP_KEYS = {
    "name": str,
    "seed": int,
    "task": dict,
    "model": dict,
    "loss": str,
    "batch_size": (int, type(None)),
    "eval_every": int,
    "target_accuracy": (int, float),
    "stop_at_target": bool,
    "output_dir": str,
    "methods": list,
    "scaling": dict,
    "checkpoint_every": (int, type(None)),
    "seeds": list,
    "forward_pass_budget": int,
    "fitness_subset": (int, type(None)),
    "validation": dict,
    "answer": dict,
}
MODEL_KEYS = models.BUILT_IN_KEYS  # the built-in MLP's; model.class names your own
VALIDATION_KEYS = ("fraction", "seed")
ANSWER_KEYS = ("reference",)


def _check_loss_kind(label: str, strategy: dict | None, loss: str) -> None:
    takes_residuals = strategy is not None and strategy["name"] in RESIDUAL_STRATEGIES
    nn.check_loss_kind(loss, takes_residuals=takes_residuals, where=f"method {label!r} loss")


def _parse_method(
    raw: Any, defaults: dict, steps_override: int | None, where: str = "methods[0]"
) -> MethodConfig:
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping, got {type(raw).__name__}")
    schema.check_keys("a method", raw, METHOD_KEYS)
    if sum(key in raw for key in ("strategy", "optimizer", "elm")) != 1:
        raise ValueError(
            f"{where} needs exactly one of 'strategy' (gradient-free), 'optimizer' (gradient) or "
            f"'elm' (a least-squares readout), got {sorted(raw)}"
        )
    if "elm" in raw:
        elm = raw["elm"] if raw["elm"] is not None else {}
        if not isinstance(elm, dict):
            raise TypeError(f"{where}.elm must be a mapping (e.g. {{ridge: 1e-3}})")
        schema.check_keys(f"{where}.elm", elm, ("ridge",))
        if isinstance(elm.get("ridge"), str | bool):
            raise TypeError(f"{where}.elm.ridge must be a number, got {elm['ridge']!r}")
    if "strategy" in raw:
        validate_strategy_section(raw["strategy"], f"{where}.strategy")
    label = raw.get("label") or (
        "elm" if "elm" in raw else (raw.get("strategy") or raw.get("optimizer"))["name"]
    )
    budget = [raw[k] for k in ("generations", "steps") if k in raw]
    if len(budget) > 1 or (not budget and defaults.get("forward_pass_budget") is None):
        raise ValueError(
            f"method {label!r} needs one of 'generations' or 'steps' (or a top-level "
            "forward_pass_budget that sets them)"
        )
    steps = None
    if steps_override is not None or budget:
        steps = check_int(
            f"method {label!r} generations/steps",
            steps_override if steps_override is not None else budget[0],
            1,
        )
    skip = raw.get("skip")
    if skip is not None and (not isinstance(skip, str) or not skip.strip()):
        raise TypeError(f"{where}.skip must be a non-empty string (the reason), got {skip!r}")
    if "fitness_subset" in raw and "batch_size" in raw and raw["fitness_subset"] is not None:
        raise ValueError(
            f"{where} sets both fitness_subset (a fixed evaluation subset) and batch_size "
            "(minibatches): keep one"
        )
    fitness_subset = None
    if "strategy" in raw:
        fitness_subset = raw.get(
            "fitness_subset", None if "batch_size" in raw else defaults.get("fitness_subset")
        )
    elif raw.get("fitness_subset") is not None:
        raise ValueError(f"{where}.fitness_subset applies to gradient-free methods only")
    if fitness_subset is not None:
        if isinstance(fitness_subset, bool) or not isinstance(fitness_subset, int):
            raise TypeError(f"{where}.fitness_subset must be an integer, got {fitness_subset!r}")
        fitness_subset = check_int(f"{where}.fitness_subset", fitness_subset, 1)
    batch_size = raw.get("batch_size", defaults["batch_size"])
    if batch_size is not None:
        batch_size = check_int(f"method {label!r} batch_size", batch_size, 1)
    population_batch_size = raw.get("population_batch_size")
    if population_batch_size is not None:
        population_batch_size = check_int(
            f"method {label!r} population_batch_size", population_batch_size, 1
        )
    activation = raw.get("activation", defaults["activation"])
    nn.get_activation(activation)
    loss = raw.get("loss", defaults["loss"])
    nn.get_loss(loss)
    _check_loss_kind(str(label), raw.get("strategy"), loss)
    return MethodConfig(
        label=str(label),
        strategy=raw.get("strategy"),
        optimizer=raw.get("optimizer"),
        steps=steps,
        loss=loss,
        batch_size=batch_size,
        eval_every=check_int(
            f"method {label!r} eval_every", raw.get("eval_every", defaults["eval_every"]), 1
        ),
        activation=activation,
        population_batch_size=population_batch_size,
        elm=None if "elm" not in raw else dict(raw["elm"] or {}),
        fitness_subset=fitness_subset,
        skip=skip,
        own_budget=bool(budget) or steps_override is not None,
    )


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise TypeError(f"{where} must be a non-empty list of integers, got {value!r}")
    seeds = tuple(check_int(f"{where}[{i}]", seed, *SEED_RANGE) for i, seed in enumerate(value))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{where} must not repeat a seed, got {list(seeds)}")
    return seeds


def _parse_validation(value: dict) -> dict:
    schema.check_keys("validation", value, VALIDATION_KEYS)
    fraction = value.get("fraction", 0.2)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"validation.fraction must be a number, got {fraction!r}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation.fraction must lie in (0, 1), got {fraction}")
    return {
        "fraction": float(fraction),
        "seed": check_int("validation.seed", value.get("seed", 0), 0),
    }


def parse_comparison(
    raw: dict,
    *,
    steps: int | None = None,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    forward_pass_budget: int | None = None,
) -> ComparisonConfig:
    """Validate a comparison config dict; ``steps`` overrides every method's budget,
    ``methods`` keeps only the listed labels, ``seeds`` replaces the seed list and
    ``forward_pass_budget`` the shared budget."""
    if not isinstance(raw, dict):
        raise TypeError(f"a config must be a mapping at the top level, got {type(raw).__name__}")
    if seeds is not None:
        raw = {**{k: v for k, v in raw.items() if k != "seed"}, "seeds": list(seeds)}
    if forward_pass_budget is not None:
        raw = {**raw, "forward_pass_budget": forward_pass_budget}
    schema.check_section(
        "", raw, TOP_KEYS, ("name", "task", "methods"), label="the comparison config"
    )
    model = models.model_section(raw.get("model"))
    if models.is_custom(model):
        overriding = [
            m.get("label", "?") for m in raw["methods"] if isinstance(m, dict) and "activation" in m
        ]
        if overriding:
            raise ValueError(
                f"methods {overriding} set 'activation', which only the built-in MLP takes; "
                f"model.class {model['class']!r} defines its own"
            )
        if raw.get("scaling") is not None:
            raise ValueError("scaling sweeps the built-in MLP's hidden widths: drop model.class")
    if "name" not in raw["task"]:
        raise ValueError("the task section needs a 'name' ('digits' or 'mnist')")
    defaults = {
        "loss": raw.get("loss", "cross_entropy"),
        "batch_size": raw.get("batch_size", 256),
        "eval_every": raw.get("eval_every", 50),
        "activation": model.get("activation", "tanh"),  # model.class: unused
        "fitness_subset": raw.get("fitness_subset"),
        "forward_pass_budget": None
        if raw.get("forward_pass_budget") is None
        else check_int("forward_pass_budget", raw["forward_pass_budget"], 1),
    }
    check_run_name(raw["name"])
    check_int("seed", raw.get("seed", 0), *SEED_RANGE)
    seed_list = None
    if "seeds" in raw:
        if "seed" in raw:
            raise ValueError("give either 'seed' or 'seeds' (a list), not both")
        seed_list = _parse_seeds(raw["seeds"], "seeds")
    validation = None if "validation" not in raw else _parse_validation(raw["validation"])
    answer = raw.get("answer")
    if answer is not None:
        schema.check_keys("answer", answer, ANSWER_KEYS)
        if not isinstance(answer.get("reference"), str):
            raise TypeError("answer.reference must be the label of a method (e.g. adam)")
    parsed = tuple(
        _parse_method(m, defaults, steps, f"methods[{i}]") for i, m in enumerate(raw["methods"])
    )
    for method in parsed:
        check_run_name(method.label, f"label of method {method.label!r}")
    parsed, labels = select_methods(parsed, methods)
    if answer is not None and answer["reference"] not in labels:
        raise ValueError(
            f"answer.reference {answer['reference']!r} is not a method label; the config has "
            f"{labels}"
        )
    scaling = raw.get("scaling")
    if scaling is not None:
        schema.check_keys("scaling", scaling, ("hidden",))
        if not scaling.get("hidden"):
            raise ValueError("scaling needs 'hidden': a list of hidden-layer width lists")
    target = float(raw.get("target_accuracy", 0.95))
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target_accuracy must lie in (0, 1], got {target}")
    return ComparisonConfig(
        name=raw["name"],
        seed=raw.get("seed", 0) if seed_list is None else seed_list[0],
        task=dict(raw["task"]),
        model=model,
        methods=parsed,
        target_accuracy=target,
        stop_at_target=raw.get("stop_at_target", scaling is not None),
        output_dir=raw.get("output_dir", "results"),
        scaling=scaling,
        raw=raw,
        checkpoint_every=None
        if raw.get("checkpoint_every") is None
        else check_int("checkpoint_every", raw["checkpoint_every"], 1),
        seeds=seed_list,
        forward_pass_budget=defaults["forward_pass_budget"],
        validation=validation,
        answer=None if answer is None else dict(answer),
    )


def load_comparison(path: str | Path, **overrides) -> ComparisonConfig:
    """Read and validate a comparison YAML file (``overrides`` as in :func:`parse_comparison`)."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and "class" in raw["model"]:
        # model.class is imported from the config's folder first (then cwd, then packages).
        raw = {**raw, "model": {**raw["model"], "_config_dir": str(Path(path).resolve().parent)}}
    return parse_comparison(raw, **overrides)


def load_task(task: dict, validation: dict | None = None) -> Dataset:
    """The data set a ``task`` section names (``digits``: ``seed``, ``test_fraction``;
    ``mnist``: ``path``); with ``validation`` (``{fraction, seed}``), its training split cut
    into a smaller training split and a validation split that takes the test split's place."""
    kwargs = {k: v for k, v in task.items() if k != "name"}
    dataset = load_dataset(task["name"], **kwargs)
    return dataset if validation is None else validation_split(dataset, **validation)


def validation_split(dataset: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
    """``dataset`` with a stratified ``fraction`` of its training split held out as the
    "test" split (the real test split is dropped, so nothing tuned on it can see it)."""
    import numpy as np

    labels = np.asarray(dataset.y_train)
    train, held_out = split_indices(labels, fraction, seed, stratify=dataset.num_classes > 0)
    return dataset._replace(
        x_train=dataset.x_train[train],
        y_train=dataset.y_train[train],
        x_test=dataset.x_train[held_out],
        y_test=dataset.y_train[held_out],
        name=f"{dataset.name}, validation split ({fraction:.0%} of train, seed {seed})",
    )


def fitness_subset_indices(num_train: int, size: int, seed: int, label: str = "") -> jax.Array:
    """The fixed evaluation subset: ``size`` training indices (sorted), the first of a
    permutation under ``fold_in(key(seed), 3)``: the same for every method given ``seed``."""
    if size > num_train:
        raise ValueError(
            f"method {label!r} fitness_subset={size} exceeds the {num_train} training examples"
        )
    permutation = jax.random.permutation(jax.random.fold_in(jax.random.key(seed), 3), num_train)
    return jax.numpy.sort(permutation[:size])


class MethodSetup(NamedTuple):
    """Everything :func:`run_method` hands to :func:`esjax.baselines.timed_run`."""

    model: nn.FlaxModel
    step_fn: Callable
    state: Any
    counter: Callable
    evaluate: Callable
    forward_passes_per_step: int
    examples_per_step: int
    description: str
    solution: Callable | None = None  # state -> the trained parameters (saved as solution.msgpack)
    # state -> forward passes spent so far (None: steps × forward_passes_per_step).
    count_forward_passes: Callable | None = None
    evaluation: str = ""  # what a member or step is scored on, for the tables


def method_model(
    method: MethodConfig, dataset: Dataset, model_section: dict, key: jax.Array
) -> nn.FlaxModel:
    """The comparison's model for one method: the built-in MLP with the method's activation, or
    the config's own class (``model: {class: "module:Name", ...}``)."""
    if models.is_custom(model_section):
        return models.build_model(model_section, dataset.num_features, dataset.num_classes, key)
    return nn.mlp(
        dataset.num_features,
        dataset.num_classes,
        model_section["hidden"],
        method.activation,
        key=key,
        api=model_section["api"],
    )


def build_method(
    method: MethodConfig,
    dataset: Dataset,
    model_section: dict,
    seed: int,
    *,
    subset_seed: int | None = None,
) -> MethodSetup:
    """The model, step function and initial state of one method (nothing is compiled).

    ``subset_seed`` draws a ``fitness_subset`` (default ``seed``); the step function depends
    on it, never on ``seed``, so the seeds of one method can share it."""
    seed_key = jax.random.key(seed)
    model = method_model(method, dataset, model_section, jax.random.fold_in(seed_key, 0))
    batch_size = method.batch_size
    x_train, y_train = dataset.x_train, dataset.y_train
    if method.gradient_free and method.fitness_subset is not None:
        index = fitness_subset_indices(
            dataset.num_train,
            method.fitness_subset,
            seed if subset_seed is None else subset_seed,
            method.label,
        )
        x_train, y_train, batch_size = x_train[index], y_train[index], None
    examples = int(x_train.shape[0]) if batch_size is None else batch_size
    fitness = nn.dataset_fitness(model, method.loss, x_train, y_train, batch_size)
    metrics = classifier_metrics(model, dataset)
    if batch_size is not None:
        evaluation = f"minibatch of {batch_size}"
    elif method.gradient_free and method.fitness_subset is not None:
        evaluation = f"fixed subset of {examples}"
    else:
        evaluation = f"whole training set ({examples})"
    if method.gradient_free:
        es = build_strategy(method.strategy)
        per_generation = es.capabilities.evaluations_per_generation or es.population_size
        counted = es.capabilities.count_evaluations is not None
        return MethodSetup(
            model=model,
            # Fused population forward for low-rank ES; the loop's generation otherwise.
            step_fn=lowrank.make_generation(
                es,
                fitness,
                batch_size=method.population_batch_size,
                fitness_takes_key=batch_size is not None,
            ),
            state=es.init(jax.random.fold_in(seed_key, 1), model.params),
            counter=lambda s: s.generation,
            evaluate=lambda s: metrics(s.unravel(es.solution(s))),
            solution=lambda s: s.unravel(es.solution(s)),
            # Nominal (a budget's unit); what was spent is the strategy's own count below.
            forward_passes_per_step=per_generation * examples,
            examples_per_step=examples,
            description=f"{method.strategy['name']}, population {es.population_size}"
            + (" (evaluations counted by its sequential rule)" if counted else ""),
            count_forward_passes=lambda s: int(jax.device_get(s.evaluations)) * examples,
            evaluation=evaluation,
        )
    if method.elm is not None:
        init, step = elm_trainer(model, dataset, **method.elm)
        return MethodSetup(
            model=model,
            step_fn=step,
            state=init(model.params),
            counter=lambda s: s.step,
            evaluate=lambda s: metrics(s.params),
            solution=lambda s: s.params,
            # One forward pass per training example gives the hidden features; the solve is a
            # (hidden + 1)² system. Counted once: later steps keep the readout.
            forward_passes_per_step=dataset.num_train,
            examples_per_step=dataset.num_train,
            description=f"ELM, ridge readout (λ = {method.elm.get('ridge', 1e-3)})",
            # Spent at step 0 only, however many steps are run.
            count_forward_passes=lambda s: dataset.num_train * int(jax.device_get(s.step) > 0),
            evaluation=f"whole training set ({dataset.num_train}), once",
        )
    trainer = optax_trainer(fitness, build_optimizer(method.optimizer), method.label)
    return MethodSetup(
        model=model,
        step_fn=trainer.step,
        state=trainer.init(model.params),
        counter=lambda s: s.step,
        evaluate=lambda s: metrics(s.params),
        solution=lambda s: s.params,
        forward_passes_per_step=(1 + BACKWARD_COST_IN_FORWARDS) * examples,
        examples_per_step=examples,
        description=f"optax.{method.optimizer['name']} (backprop)",
        evaluation=evaluation,
    )


def resolve_steps(method: MethodConfig, setup: MethodSetup, budget: int | None) -> MethodConfig:
    """``method`` with its steps set from the forward-pass ``budget`` when it has none:
    ``budget // forward_passes_per_step``, so it spends the budget to within one step."""
    if method.steps is not None:
        return method
    if budget is None:
        raise ValueError(f"method {method.label!r} needs 'generations' or 'steps'")
    if setup.count_forward_passes is not None and method.gradient_free:
        es = build_strategy(method.strategy)
        if es.capabilities.count_evaluations is not None:
            raise ValueError(
                f"method {method.label!r} ({es.name}) counts its evaluations per generation as "
                "it goes, so the forward_pass_budget cannot fix its generations in advance: "
                "give it 'generations'"
            )
    if method.elm is not None:
        raise ValueError(f"method {method.label!r} (ELM) needs 'steps' (1 solves its readout)")
    steps = budget // setup.forward_passes_per_step
    if steps < 1:
        raise ValueError(
            f"forward_pass_budget={budget:,} is less than one step of method {method.label!r} "
            f"({setup.forward_passes_per_step:,} forward passes)"
        )
    return dataclasses.replace(method, steps=int(steps), own_budget=False)


CHECKPOINT_FILE = "checkpoint.msgpack"
METHOD_SUMMARY_FILE = "summary.json"
SOLUTION_FILE = "solution.msgpack"


def _method_fingerprint(
    method: MethodConfig,
    model_section: dict,
    seed: int,
    task: dict,
    target_accuracy: float,
    stop_at_target: bool,
    extra: dict | None = None,
) -> dict:
    # Everything that changes a method's trajectory or where it ends; resuming requires all of
    # it to agree. The study keys enter only when set, so older runs still resume.
    fields = dataclasses.asdict(method)
    fields.pop("own_budget")
    for key in ("fitness_subset", "skip"):
        if fields[key] is None:
            fields.pop(key)
    return schema.fingerprint(
        {
            "method": fields,
            "model": model_section,
            "seed": seed,
            "task": task,
            "target_accuracy": target_accuracy,
            "stop_at_target": stop_at_target,
            **(extra or {}),
        }
    )


def _check_fingerprint(path: Path, saved: dict | None, expected: dict) -> None:
    schema.check_fingerprint(
        path,
        saved,
        expected,
        remedy="resume with the config (and --steps/--output-dir) that wrote it, or delete the "
        "folder",
    )


def _resume_point(
    method_dir: Path, like: Any, fingerprint: dict
) -> tuple[Any, list[dict] | None, float]:
    """The checkpointed state, its history and compile seconds (or ``like``, None, 0).

    The config fingerprint is checked before the state is loaded, so a changed config is
    reported as such rather than as a shape mismatch."""
    path = method_dir / CHECKPOINT_FILE
    if not path.exists() and not checkpoint.previous_path(path).exists():
        return like, None, 0.0
    path, header = checkpoint.intact_header(path)
    metadata = header["metadata"] or {}
    _check_fingerprint(path, metadata.get("fingerprint"), fingerprint)
    return checkpoint.load(path, like), metadata["history"], metadata["compile_s"]


def _clear_method_dir(method_dir: Path, also: tuple[str, ...] = ()) -> None:
    # A fresh (not resumed) run must not leave an older run's summary or checkpoints (or the
    # files named in ``also``) behind, where a later --resume would find them.
    for name in (METHOD_SUMMARY_FILE, CHECKPOINT_FILE, SOLUTION_FILE, *also):
        (method_dir / name).unlink(missing_ok=True)
    checkpoint.previous_path(method_dir / CHECKPOINT_FILE).unlink(missing_ok=True)


def _finished_summary(method_dir: Path, fingerprint: dict) -> dict | None:
    """The summary a finished run left in ``method_dir`` (its fingerprint checked and removed),
    or None when there is none."""
    path = method_dir / METHOD_SUMMARY_FILE
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    _check_fingerprint(path, summary.pop("fingerprint", None), fingerprint)
    return summary


def resumable_timed_run(
    step_fn: Callable,
    state: Any,
    key: jax.Array,
    num_steps: int,
    *,
    run_dir: Path | None,
    fingerprint: dict,
    checkpoint_every: int | None,
    resume: bool = False,
    counter: Callable[[Any], jax.Array],
    **timed_run_kwargs,
) -> tuple[Any, float]:
    """:func:`~esjax.baselines.timed_run` that checkpoints: the one resumable chunked run of
    both kinds of comparison (a model on a data set, and a problem).

    With ``run_dir`` and ``checkpoint_every = K``, the state, the history rows and the compile
    seconds are saved (with ``fingerprint``) to ``<run_dir>/checkpoint.msgpack`` at the first
    evaluation boundary at or after every K steps, and at the end (also when ``stop`` ended the
    run early). With ``resume``, the run continues from the checkpoint in ``run_dir`` if there
    is one (:func:`_resume_point`: its fingerprint must equal ``fingerprint``), else from
    ``state``.

    Returns:
      ``(TimedRun, compile seconds of every process that worked on this run)``.
    """
    history, previous_compile = None, 0.0
    if resume and run_dir is not None:
        state, history, previous_compile = _resume_point(run_dir, state, fingerprint)
    saved_at = [int(counter(state))]

    def save(state, rows: list[dict], compile_seconds: float) -> None:
        metadata = {
            "fingerprint": fingerprint,
            "history": rows,
            "compile_s": previous_compile + compile_seconds,
        }
        checkpoint.save(run_dir / CHECKPOINT_FILE, state, metadata)
        saved_at[0] = rows[-1]["step"]

    def on_chunk(state, rows: list[dict], compile_seconds: float) -> None:
        done = rows[-1]["step"]
        if done // checkpoint_every > saved_at[0] // checkpoint_every or done >= num_steps:
            save(state, rows, compile_seconds)

    saving = run_dir is not None and checkpoint_every is not None
    result = timed_run(
        step_fn,
        state,
        key,
        num_steps,
        counter=counter,
        history=history,
        on_chunk=on_chunk if saving else None,
        **timed_run_kwargs,
    )
    if saving and saved_at[0] != result.steps:
        save(result.state, result.history, result.compile_seconds)  # stopped early
    return result, previous_compile + result.compile_seconds


def run_method(
    method: MethodConfig,
    dataset: Dataset,
    model_section: dict,
    seed: int,
    *,
    target_accuracy: float,
    stop_at_target: bool = False,
    progress: bool = True,
    method_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    task: dict | None = None,
    setup: MethodSetup | None = None,
    subset_seed: int | None = None,
    validation: dict | None = None,
    compiled: dict | None = None,
) -> dict:
    """Train one method and return its summary (with ``history``: the evaluation rows).

    ``setup`` replaces :func:`build_method`'s model, step function and initial state, e.g. with
    another library's strategy on this method's model, so that it is trained, timed, evaluated and
    counted exactly as the method would be (a resume then checks the method's config, not the
    replaced step function).

    With ``method_dir``, the finished method's summary is written to ``<method_dir>/summary.json``
    and, with ``checkpoint_every = K``, its state and history to ``<method_dir>/checkpoint.msgpack``
    at the first evaluation boundary at or after every K steps, and at the end. ``resume=True``
    returns a finished method's saved summary without training, and continues an unfinished one
    from its checkpoint: every evaluation row, and the final state, are bit-identical to an
    uninterrupted run (wall-clock and compile time are what each process measured, summed). A
    summary or checkpoint written under a different method, model, seed, task, target or
    ``stop_at_target`` is refused. Without ``resume`` the folder's earlier summary and
    checkpoints are removed first.

    ``subset_seed`` draws the method's ``fitness_subset`` (default ``seed``), ``validation``
    records the validation split the dataset was cut with (in the fingerprint) and ``compiled``
    is :func:`~esjax.baselines.timed_run`'s shared cache of compiled chunks (for seeds of one
    method built with the same ``setup.step_fn``).
    """
    if method.steps is None:
        raise ValueError(f"method {method.label!r} has no steps yet: see resolve_steps")
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
        if method_dir is None:
            raise ValueError("checkpoint_every needs a method_dir to write checkpoints to")
    if setup is None:
        setup = build_method(method, dataset, model_section, seed, subset_seed=subset_seed)
    stop = (lambda row: row["test_accuracy"] >= target_accuracy) if stop_at_target else None
    method_dir = None if method_dir is None else Path(method_dir)
    extra = {}
    if method.fitness_subset is not None:
        extra["subset_seed"] = seed if subset_seed is None else subset_seed
    if validation is not None:
        extra["validation"] = validation
    fingerprint = _method_fingerprint(
        method, model_section, seed, task or {}, target_accuracy, stop_at_target, extra
    )
    if method_dir is not None and not resume:
        _clear_method_dir(method_dir)
    if method_dir is not None and resume:
        summary = _finished_summary(method_dir, fingerprint)
        if summary is not None:
            return summary
    result, compile_seconds = resumable_timed_run(
        setup.step_fn,
        setup.state,
        jax.random.fold_in(jax.random.key(seed), 2),
        method.steps,
        run_dir=method_dir,
        fingerprint=fingerprint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        counter=setup.counter,
        evaluate=setup.evaluate,
        eval_every=method.eval_every,
        forward_passes_per_step=setup.forward_passes_per_step,
        stop=stop,
        progress=progress,
        description=method.label,
        count_forward_passes=setup.count_forward_passes,
        compiled=compiled,
    )
    final = result.history[-1]
    summary = {
        "label": method.label,
        "kind": method.kind,
        "description": setup.description,
        "loss": method.loss,
        "activation": method.activation,
        "num_params": setup.model.num_params,
        "batch_size": setup.examples_per_step,
        "evaluation": setup.evaluation,
        "steps": result.steps,
        "own_budget": method.own_budget,
        "forward_passes_per_step": setup.forward_passes_per_step,
        "forward_passes": final["forward_passes"],
        "wall_clock_s": final["wall_clock_s"],
        "compile_s": compile_seconds,
        "final_test_accuracy": final["test_accuracy"],
        "final_test_loss": final["test_loss"],
        "best_test_accuracy": max(row["test_accuracy"] for row in result.history),
        "target": report.time_to_target(result.history, target_accuracy),
        "history": result.history,
    }
    if method_dir is not None:
        method_dir.mkdir(parents=True, exist_ok=True)
        if setup.solution is not None:
            checkpoint.save_solution(
                method_dir / SOLUTION_FILE,
                setup.solution(result.state),
                {"label": method.label, "final_test_accuracy": final["test_accuracy"]},
            )
        write_json(method_dir / METHOD_SUMMARY_FILE, {**summary, "fingerprint": fingerprint})
    return summary


def _without_history(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "history"}


def run_comparison(
    config: ComparisonConfig,
    *,
    output_dir: str | Path | None = None,
    progress: bool = True,
    checkpoint_every: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Run every method (and the scaling study, if configured) and write all outputs.

    A run folder that holds an earlier comparison's outputs is refused (nothing deleted) unless
    ``resume`` or ``overwrite`` (which removes only esjax's own outputs).

    ``checkpoint_every`` (default: the config's ``checkpoint_every``) and ``resume`` are passed to
    :func:`run_method` for every method, with ``<run_dir>/<label>/`` as its folder: a killed
    comparison resumed with ``resume=True`` skips the finished methods, continues the interrupted
    one from its checkpoint and reproduces every number but wall-clock and compile time.

    Returns:
      ``{"run_dir", "methods": [summary, ...], "scaling": [row, ...] or None}``.
    """
    if checkpoint_every is None:
        checkpoint_every = config.checkpoint_every
    else:
        checkpoint_every = check_int("checkpoint_every (--checkpoint-every)", checkpoint_every, 1)
    run_dir = Path(output_dir or config.output_dir) / config.name
    outputs = ("summary.json", "comparison.md", "scaling", *(m.label for m in config.methods))
    claim_run_dir(run_dir, outputs, resume=resume, overwrite=overwrite)
    dataset = load_task(config.task, config.validation)
    context = {
        "name": config.name,
        "task": dataset.name,
        "num_train": dataset.num_train,
        "num_test": int(dataset.x_test.shape[0]),
        "model": config.model,
        "target_accuracy": config.target_accuracy,
        "seed": config.seed,
    }
    if config.seeds is not None:
        context["seeds"] = list(config.seeds)
    if config.validation is not None:
        context["evaluated_on"] = "validation"
        context["validation"] = config.validation
    if config.forward_pass_budget is not None:
        context["forward_pass_budget"] = config.forward_pass_budget
    summaries, scaling_rows = [], None
    resumable = {
        "checkpoint_every": checkpoint_every,
        "resume": resume,
        "task": config.task,
        "validation": config.validation,
    }
    if config.scaling is not None:
        scaling_rows = run_scaling(config, dataset, run_dir, progress=progress, **resumable)
    else:
        for method in config.methods:
            if method.skip is not None:
                summaries.append(_skipped_summary(method, dataset, config.model))
                continue
            summaries.append(
                _run_seeds(config, method, dataset, run_dir, progress=progress, **resumable)
            )
        ran = [s for s in summaries if "skipped" not in s]
        if ran:
            report.plot_accuracy(ran, run_dir, config.target_accuracy, context)
        if config.answer is not None:
            context["answer_reference"] = config.answer["reference"]
            context["answer"] = report.answer_paragraph(
                summaries, context, config.answer["reference"]
            )
        report.write_comparison_md(run_dir / "comparison.md", context, summaries)
    write_json(
        run_dir / "summary.json",
        {
            **context,
            "output_dir": str(run_dir.parent),
            "methods": [_without_history(s) for s in summaries],
            "scaling": scaling_rows,
            "config": config.raw,
        },
    )
    return {"run_dir": str(run_dir), "methods": summaries, "scaling": scaling_rows}


def _skipped_summary(method: MethodConfig, dataset: Dataset, model_section: dict) -> dict:
    model = method_model(method, dataset, model_section, jax.random.key(0))
    return {
        "label": method.label,
        "kind": method.kind,
        "description": f"not run: {method.skip}",
        "skipped": method.skip,
        "num_params": model.num_params,
        "steps": method.steps,
    }


def _run_seeds(
    config: ComparisonConfig,
    method: MethodConfig,
    dataset: Dataset,
    run_dir: Path,
    *,
    progress: bool,
    **resumable,
) -> dict:
    """One method at every seed (its steps resolved from the budget once); the per-seed
    summary without a ``seeds`` list, else the aggregate (:func:`aggregate_seeds`)."""
    seeds, subset_seed = config.run_seeds, config.run_seeds[0]
    first, compiled, per_seed = None, {}, []
    for seed in seeds:
        setup = build_method(method, dataset, config.model, seed, subset_seed=subset_seed)
        if first is None:
            first, method = setup, resolve_steps(method, setup, config.forward_pass_budget)
        else:  # the same step function (it depends on the subset, not the seed): compile once
            setup = setup._replace(step_fn=first.step_fn, evaluate=first.evaluate)
        method_dir = run_dir / method.label
        if config.seeds is not None:
            method_dir = method_dir / f"seed_{seed}"
        summary = run_method(
            method,
            dataset,
            config.model,
            seed,
            target_accuracy=config.target_accuracy,
            stop_at_target=config.stop_at_target,
            progress=progress,
            method_dir=method_dir,
            setup=setup,
            subset_seed=subset_seed,
            compiled=compiled,
            **resumable,
        )
        report.write_metrics_csv(method_dir / "metrics.csv", summary["history"])
        per_seed.append({**summary, "seed": seed})
    if config.seeds is None:
        return per_seed[0]
    aggregate = aggregate_seeds(per_seed, config.target_accuracy)
    report.write_metrics_csv(run_dir / method.label / "metrics.csv", aggregate["history"])
    return aggregate


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return float((sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5)


def aggregate_seeds(per_seed: list[dict], target_accuracy: float) -> dict:
    """One method's summary over seeds: means of the numbers, the sample standard deviation
    and range of the final test accuracy, the mean evaluation curve as ``history`` (when every
    seed was evaluated at the same steps; else the first seed's) and ``per_seed``."""
    first = per_seed[0]
    histories = [s["history"] for s in per_seed]
    aligned = all(
        [r["step"] for r in h] == [r["step"] for r in histories[0]] for h in histories[1:]
    )
    if aligned:
        history = [
            {key: _mean([h[i][key] for h in histories]) for key in rows}
            for i, rows in enumerate(histories[0])
        ]
    else:
        history = histories[0]
    accuracies = [s["final_test_accuracy"] for s in per_seed]
    passes = [s["forward_passes"] for s in per_seed]
    seconds = [s["wall_clock_s"] for s in per_seed]
    return {
        **{k: first[k] for k in first if k not in ("history", "seed", "target")},
        "steps": first["steps"]
        if all(s["steps"] == first["steps"] for s in per_seed)
        else _mean([s["steps"] for s in per_seed]),
        "forward_passes": _mean(passes),
        "forward_passes_min": min(passes),
        "forward_passes_max": max(passes),
        "wall_clock_s": _mean(seconds),
        "wall_clock_std": _std(seconds),
        "compile_s": float(sum(s["compile_s"] for s in per_seed)),
        "final_test_accuracy": _mean(accuracies),
        "test_accuracy_std": _std(accuracies),
        "test_accuracy_min": min(accuracies),
        "test_accuracy_max": max(accuracies),
        "final_test_loss": _mean([s["final_test_loss"] for s in per_seed]),
        "best_test_accuracy": _mean([s["best_test_accuracy"] for s in per_seed]),
        "target": report.time_to_target(history, target_accuracy),
        "seeds_reaching_target": sum(s["target"] is not None for s in per_seed),
        "seeds": [s["seed"] for s in per_seed],
        "per_seed": [_without_history(s) for s in per_seed],
        "history": history,
    }


def run_scaling(
    config: ComparisonConfig,
    dataset: Dataset,
    run_dir: Path,
    *,
    progress: bool = True,
    **resumable,
) -> list[dict]:
    """Every method at every ``scaling.hidden`` configuration; writes the scaling outputs
    (``resumable``: ``checkpoint_every``, ``resume``, ``task`` as in :func:`run_method`)."""
    rows = []
    for hidden in config.scaling["hidden"]:
        hidden = [int(width) for width in (hidden if isinstance(hidden, list) else [hidden])]
        model_section = {**config.model, "hidden": hidden}
        tag = "x".join(str(width) for width in hidden) or "linear"
        for method in config.methods:
            method_dir = run_dir / "scaling" / f"{method.label}_hidden_{tag}"
            setup = build_method(method, dataset, model_section, config.seed)
            method = resolve_steps(method, setup, config.forward_pass_budget)
            summary = run_method(
                method,
                dataset,
                model_section,
                config.seed,
                setup=setup,
                target_accuracy=config.target_accuracy,
                stop_at_target=config.stop_at_target,
                progress=progress,
                method_dir=method_dir,
                **resumable,
            )
            report.write_metrics_csv(method_dir / "metrics.csv", summary["history"])
            target = summary["target"]
            rows.append(
                {
                    "label": method.label,
                    "hidden": tag,
                    "num_params": summary["num_params"],
                    "reached": target is not None,
                    "steps_to_target": None if target is None else target["step"],
                    "forward_passes_to_target": None
                    if target is None
                    else target["forward_passes"],
                    "seconds_to_target": None if target is None else target["wall_clock_s"],
                    "steps_run": summary["steps"],
                    "best_test_accuracy": summary["best_test_accuracy"],
                }
            )
    report.write_scaling(run_dir, rows, config.target_accuracy)
    return rows


__all__ = [
    "CHECKPOINT_FILE",
    "ComparisonConfig",
    "METHOD_KEYS",
    "METHOD_SUMMARY_FILE",
    "SOLUTION_FILE",
    "MODEL_KEYS",
    "MethodConfig",
    "MethodSetup",
    "TOP_KEYS",
    "aggregate_seeds",
    "build_method",
    "fitness_subset_indices",
    "load_comparison",
    "load_task",
    "parse_comparison",
    "resolve_steps",
    "run_comparison",
    "run_method",
    "run_scaling",
    "validation_split",
]

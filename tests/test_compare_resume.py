"""`esjax compare --resume`: a comparison killed mid-method continues exactly where it stopped."""

import json

import chex
import jax
import pytest
import yaml

from esjax import baselines, checkpoint
from esjax.cli import main
from esjax.experiments import compare

STEPS, EVAL_EVERY = 40, 10
RAW = {
    "name": "resume",
    "seed": 3,
    "task": {"name": "digits", "seed": 1},
    "model": {"hidden": [8]},
    "batch_size": 64,
    "eval_every": EVAL_EVERY,
    "checkpoint_every": EVAL_EVERY,
    "methods": [
        {
            "label": "openai_es",
            "strategy": {"name": "openai_es", "population_size": 16, "sigma": 0.05},
            "generations": STEPS,
        },
        {"label": "adam", "optimizer": {"name": "adam", "learning_rate": 0.01}, "steps": STEPS},
    ],
}


class Killed(Exception):
    pass


def _without_clock(history):
    return [{k: v for k, v in row.items() if k != "wall_clock_s"} for row in history]


def _final_state(run_dir, method):
    config = compare.parse_comparison(RAW)
    setup = compare.build_method(method, compare.load_task(config.task), config.model, config.seed)
    return checkpoint.load(run_dir / method.label / compare.CHECKPOINT_FILE, setup.state)


@pytest.fixture(scope="module")
def straight_and_resumed(tmp_path_factory):
    config = compare.parse_comparison(RAW)
    straight_dir = tmp_path_factory.mktemp("straight")
    straight = compare.run_comparison(config, output_dir=straight_dir, progress=False)

    # Kill the second run right after Adam's second checkpoint (step 20 of 40): the save
    # completes, then the "process dies".
    killed_dir = tmp_path_factory.mktemp("killed")
    real_save, saves = checkpoint.save, []

    def dying_save(path, state, metadata=None, **kwargs):
        real_save(path, state, metadata, **kwargs)
        saves.append(path)
        if len(saves) == STEPS // EVAL_EVERY + 2:
            raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare.checkpoint, "save", dying_save)
        with pytest.raises(Killed):
            compare.run_comparison(config, output_dir=killed_dir, progress=False)

    # Resume through the CLI; record what timed_run is asked to do.
    calls = []
    real_timed_run = compare.timed_run

    def recording_timed_run(*args, **kwargs):
        calls.append(kwargs.get("description"))
        calls.append(len(kwargs.get("history") or []))
        return real_timed_run(*args, **kwargs)

    path = killed_dir / "resume.yaml"
    path.write_text(yaml.safe_dump(RAW))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "timed_run", recording_timed_run)
        code = main(["compare", str(path), "--output-dir", str(killed_dir), "--resume", "--quiet"])
    assert code == 0
    resumed = json.loads((killed_dir / "resume" / "summary.json").read_text())
    return config, straight_dir / "resume", straight, killed_dir / "resume", resumed, calls


def test_resume_skips_finished_methods_and_continues_the_interrupted_one(straight_and_resumed):
    *_, calls = straight_and_resumed
    # OpenAI-ES had finished (its summary.json exists): not retrained. Adam restarts with the
    # rows for steps 0, 10 and 20 it had recorded.
    assert calls == ["adam", 3]


def test_resumed_comparison_equals_the_uninterrupted_one(straight_and_resumed):
    config, straight_dir, straight, resumed_dir, resumed, _ = straight_and_resumed
    for before, after in zip(straight["methods"], resumed["methods"], strict=True):
        assert before["label"] == after["label"]
        assert after["steps"] == STEPS
        assert after["final_test_accuracy"] == before["final_test_accuracy"]
        assert after["forward_passes"] == before["forward_passes"]
    for method in config.methods:
        rows = [
            json.loads((d / method.label / "summary.json").read_text())["history"]
            for d in (straight_dir, resumed_dir)
        ]
        assert _without_clock(rows[0]) == _without_clock(rows[1])  # every evaluation, exactly
        assert len(rows[1]) == STEPS // EVAL_EVERY + 1
        # The final states, from each run's last checkpoint, are bit-identical (a strategy
        # state for ES, the optax GradientState for Adam).
        final = [_final_state(d, method) for d in (straight_dir, resumed_dir)]
        chex.assert_trees_all_equal(*final)


def test_run_method_trains_a_given_setup_alike(straight_and_resumed):
    # A replaced setup (benchmarks/train.py passes evosax's step function this way) is trained,
    # evaluated and counted as the method itself: the method's own setup reproduces the
    # comparison's rows, and another initial state, under another description, changes them.
    config, _, straight, *_ = straight_and_resumed
    adam = config.methods[1]
    dataset = compare.load_task(config.task)
    own = compare.build_method(adam, dataset, config.model, config.seed)
    other_start = compare.build_method(adam, dataset, config.model, config.seed + 1).state

    def run(setup):
        return compare.run_method(
            adam,
            dataset,
            config.model,
            config.seed,
            target_accuracy=config.target_accuracy,
            progress=False,
            setup=setup,
        )

    expected = _without_clock(straight["methods"][1]["history"])
    assert _without_clock(run(own)["history"]) == expected
    replaced = run(own._replace(state=other_start, description="replaced"))
    assert replaced["description"] == "replaced" and replaced["steps"] == STEPS
    assert _without_clock(replaced["history"]) != expected


def test_resume_refuses_a_changed_config(straight_and_resumed, tmp_path):
    config, straight_dir, *_ = straight_and_resumed
    changed = compare.parse_comparison({**RAW, "seed": 4})
    with pytest.raises(checkpoint.CheckpointError, match="differs in"):
        compare.run_comparison(changed, output_dir=straight_dir.parent, progress=False, resume=True)


@pytest.mark.parametrize(
    "steps_done, history, words",
    [
        (0, [{"step": 0, "wall_clock_s": 0.0}], "at step 0"),  # a fresh state with history
        (2, None, "at step 2 .* no history"),  # a resumed state without
        (2, [], "at step 2 .* no history"),
        (2, [{"step": 0, "wall_clock_s": 0.0}], "at step 2"),  # rows stop short of the state
        (
            3,
            [{"step": 3, "wall_clock_s": 0.0}],
            "at step 3 .* multiple of eval_every=2",
        ),  # mid-chunk
    ],
)
def test_timed_run_rejects_a_history_that_does_not_fit_the_state(steps_done, history, words):
    trainer = baselines.optax_trainer(lambda p, key: (p**2).sum())
    state = trainer.init(jax.numpy.ones(3)).replace(step=jax.numpy.asarray(steps_done))
    kwargs = dict(counter=lambda s: s.step, evaluate=lambda s: {}, eval_every=2)
    with pytest.raises(ValueError, match=f"cannot resume {words}"):
        baselines.timed_run(
            trainer.step,
            state,
            jax.random.key(0),
            4,
            forward_passes_per_step=1,
            history=history,
            **kwargs,
        )


ADAM_ONLY = {
    **RAW,
    "name": "adam_only",
    "methods": [
        {"label": "adam", "optimizer": {"name": "adam", "learning_rate": 0.01}, "steps": 20}
    ],
}


def test_resume_refuses_another_stop_rule_and_fresh_runs_clear_old_results(tmp_path):
    first = compare.run_comparison(compare.parse_comparison(ADAM_ONLY), output_dir=tmp_path)
    assert first["methods"][0]["steps"] == 20
    # Stopping at the target changes where a run ends: its saved summary cannot be reused.
    stopping = compare.parse_comparison({**ADAM_ONLY, "stop_at_target": True})
    with pytest.raises(checkpoint.CheckpointError, match="stop_at_target"):
        compare.run_comparison(stopping, output_dir=tmp_path, progress=False, resume=True)
    # A fresh run into the folder of a finished one is refused, and nothing is deleted; with
    # overwrite=True it replaces the old summary and checkpoints, so a later --resume of the
    # new config finds its own results, not the old ones.
    faster = {**ADAM_ONLY, "methods": [{**ADAM_ONLY["methods"][0], "steps": 10}]}
    before = (tmp_path / "adam_only" / "summary.json").read_text()
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        compare.run_comparison(compare.parse_comparison(faster), output_dir=tmp_path)
    assert (tmp_path / "adam_only" / "summary.json").read_text() == before
    compare.run_comparison(
        compare.parse_comparison(faster), output_dir=tmp_path, progress=False, overwrite=True
    )
    again = compare.run_comparison(
        compare.parse_comparison(faster), output_dir=tmp_path, progress=False, resume=True
    )
    assert again["methods"][0]["steps"] == 10


def test_resume_checks_the_config_before_loading_the_state(tmp_path):
    compare.run_comparison(compare.parse_comparison(ADAM_ONLY), output_dir=tmp_path, progress=False)
    (tmp_path / "adam_only" / "adam" / compare.METHOD_SUMMARY_FILE).unlink()  # "killed at the end"
    wider = {**ADAM_ONLY, "model": {"hidden": [16]}}  # other shapes: load alone would say so
    with pytest.raises(checkpoint.CheckpointError, match=r"differs in \['model'\]"):
        compare.run_comparison(
            compare.parse_comparison(wider), output_dir=tmp_path, progress=False, resume=True
        )
    with pytest.raises(ValueError, match="checkpoint_every"):
        compare.run_comparison(
            compare.parse_comparison(ADAM_ONLY), output_dir=tmp_path, checkpoint_every=0
        )


def test_residual_losses_are_refused_outside_eki():
    from esjax import nn
    from esjax.experiments.config import parse_config
    from esjax.tasks import load_digits

    raw = {
        "name": "x",
        "strategy": {"name": "openai_es", "population_size": 8},
        "problem": {"name": "digits_mlp", "loss": "softmax_residual"},
        "generations": 2,
    }
    with pytest.raises(ValueError, match="problem.loss.*only EKI"):
        parse_config(raw)
    model = nn.mlp(64, 10, [4], key=jax.random.key(0))
    with pytest.raises(ValueError, match="loss.*only EKI"):
        baselines.train_optax(model, load_digits(), jax.random.key(0), 2, loss="output_residual")


def test_checkpoint_refuses_a_plain_dataclass(tmp_path):
    import dataclasses

    @dataclasses.dataclass
    class Plain:
        value: int = 1

    with pytest.raises(TypeError, match="flax.struct dataclass"):
        checkpoint.save(tmp_path / "x.msgpack", Plain())

"""A compare config names its own Flax model class (linen or nnx) like a problem function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esjax.experiments.models import build_model, model_section

OWN_MODELS = """
import jax.numpy as jnp
from flax import linen, nnx


class Wide(linen.Module):
    num_outputs: int
    features: int = 8

    @linen.compact
    def __call__(self, x):
        return linen.Dense(self.num_outputs)(jnp.tanh(linen.Dense(self.features)(x)))


class NnxWide(nnx.Module):
    def __init__(self, num_inputs, num_outputs, features=8, *, rngs):
        self.hidden = nnx.Linear(num_inputs, features, rngs=rngs)
        self.out = nnx.Linear(features, num_outputs, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def not_a_model(x):
    return x
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "own_models.py").write_text(OWN_MODELS)
    return tmp_path


@pytest.mark.parametrize("name", ["Wide", "NnxWide"])
def test_a_model_class_of_your_own_is_built_with_the_data_set_sizes(folder, name):
    model = build_model(
        {"class": f"own_models:{name}", "features": 5}, 6, 3, jax.random.key(0), folder
    )
    assert model.num_params == 6 * 5 + 5 + 5 * 3 + 3
    outputs = model.apply(model.params, jnp.ones((4, 6)))
    assert outputs.shape == (4, 3) and np.all(np.isfinite(outputs))


def test_the_built_in_mlp_is_the_default():
    model = build_model({}, 6, 3, jax.random.key(0))
    assert model.num_params == 6 * 32 + 32 + 32 * 3 + 3


@pytest.mark.parametrize(
    "section, error, words",
    [
        ({"class": "own_models:Missing"}, (ValueError, ImportError, AttributeError), "model.class"),
        ({"class": "no_such_module:Wide"}, (ValueError, ImportError), "model.class"),
        ({"class": "own_models:not_a_model"}, TypeError, "linen.Module or flax.nnx.Module"),
        ({"class": "own_models:Wide", "widht": 3}, ValueError, "unknown key(s) ['widht']"),
        ({"class": "Wide"}, ValueError, "'module:ClassName'"),
        ({"hidden": [4], "widht": 3}, ValueError, "unknown key(s) ['widht'] in model"),
    ],
)
def test_a_bad_model_section_names_its_key(folder, section, error, words):
    with pytest.raises(error, match=None) as raised:
        model_section(section)
        build_model(section, 6, 3, jax.random.key(0), folder)
    assert words in str(raised.value)


def test_a_compare_config_trains_its_own_model_class(folder, tmp_path):
    # The class is imported from the config's folder; every method trains that model.
    from esjax.experiments.compare import load_comparison, run_comparison

    config_path = folder / "own.yaml"
    config_path.write_text(
        "name: own_model\n"
        "task: {name: digits, seed: 1}\n"
        "model: {class: 'own_models:NnxWide', features: 6}\n"
        "batch_size: 32\n"
        "eval_every: 2\n"
        "methods:\n"
        "  - {label: es, strategy: {name: openai_es, population_size: 8}, generations: 2}\n"
        "  - {label: adam, optimizer: {name: adam, learning_rate: 0.01}, steps: 2}\n"
    )
    result = run_comparison(
        load_comparison(config_path), output_dir=tmp_path / "out", progress=False
    )
    params = {m["label"]: m["num_params"] for m in result["methods"]}
    assert params == {"es": 64 * 6 + 6 + 6 * 10 + 10, "adam": 64 * 6 + 6 + 6 * 10 + 10}


def test_a_method_cannot_set_the_activation_of_a_model_class():
    from esjax.experiments.compare import parse_comparison

    with pytest.raises(ValueError, match="only the built-in MLP takes"):
        parse_comparison(
            {
                "name": "x",
                "task": {"name": "digits"},
                "model": {"class": "own_models:Wide"},
                "methods": [
                    {"label": "a", "optimizer": {"name": "adam"}, "steps": 1, "activation": "relu"}
                ],
            }
        )

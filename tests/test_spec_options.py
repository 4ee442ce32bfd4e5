"""Every registered model's options are its Keras constructor's: an option Keras has and the spec
forgot (MobileNetV3 alone has minimalistic, dropout_rate, include_preprocessing) fails here, before
a user finds it missing from `kjax info` and `--set`."""

import inspect

import pytest

from kjax_core import get_spec, list_models
from kjax_core.plugin_system.types import KJAX_OPTIONS

# Keras keywords that are legitimately not options of the Flax twin, with the reason.
NOT_OPTIONS = {
    # kjax takes it as an argument of its own (a named weight set, a file or None); it decides
    # which weights fill the model, not the model (EfficientNet's graph change for imagenet goes
    # through ModelSpec.weights_options).
    "weights": "translate's weights argument",
    # A Keras tensor to build the graph on; a Flax module is applied to any array.
    "input_tensor": "no meaning for a Flax module",
    # translate's input_shape argument (checked against the spec's minimum); the Flax module takes
    # any input size at apply time.
    "input_shape": "translate's input_shape argument",
    # The Keras model's name: no effect on its computation or weights (the Flax module's own name
    # is Flax's business).
    "name": "the Keras model's name only",
}


def option_problems(spec):
    """What differs between the spec's options and its Keras constructor's keywords."""
    signature = inspect.signature(spec.load(spec.keras_constructor))
    parameters = signature.parameters.values()
    keywords = {p.name: p.default for p in parameters
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters)
    # Options of kjax's own (features_only), which the translator keeps from Keras.
    options = {k: v for k, v in spec.default_options().items() if k not in KJAX_OPTIONS}
    problems = []
    missing = sorted(set(keywords) - set(options) - set(NOT_OPTIONS))
    if missing:
        problems.append(f"Keras takes {missing}, which the spec does not offer")
    for key in sorted(set(keywords) & set(options)):
        # Same type too: a float default (alpha=1.0) makes --set alpha=1 a float.
        if type(keywords[key]) is not type(options[key]) or keywords[key] != options[key]:
            problems.append(f"default of {key}: Keras {keywords[key]!r}, kjax {options[key]!r}")
    # The other way: every option is passed to the Keras constructor, which must take it.
    unknown = sorted(set(options) - set(keywords))
    if unknown and not takes_any:
        problems.append(f"the Keras constructor takes no {unknown}")
    if set(NOT_OPTIONS) & set(options):
        problems.append(f"options that are arguments: {sorted(set(NOT_OPTIONS) & set(options))}")
    return problems


@pytest.mark.parametrize("name", list_models())
def test_options_are_the_keras_constructors(name):
    assert option_problems(get_spec(name)) == []


def test_the_check_catches_a_forgotten_option():
    """A spec of MobileNetV3Small given MobileNetV2's options lacks three of Keras' options."""
    from dataclasses import replace

    spec = replace(get_spec("mobilenetv2"), name="mobilenetv3small",
                   keras_constructor="keras.applications:MobileNetV3Small")
    (missing, *_) = option_problems(spec)
    for option in ("minimalistic", "dropout_rate", "include_preprocessing"):
        assert repr(option) in missing
    spec = replace(get_spec("resnetrs50"), options={"include_preprocessing": False})
    assert option_problems(spec) == ["default of include_preprocessing: Keras True, kjax False"]

"""Plugins for the registry tests, loaded through fake entry points."""

from kjax_core import ModelSpec, hookimpl


class Duplicate:
    """Registers a name the ResNet plugin registers too."""

    @hookimpl
    def kjax_register_models(self, register):
        register(ModelSpec("resnet50", "impostor", "x:y", "x:y"))


class Failing:
    """Its hook raises after registering one model."""

    @hookimpl
    def kjax_register_models(self, register):
        register(ModelSpec("halfway", "broken", "x:y", "x:y"))
        raise RuntimeError("cannot register today")


duplicate = Duplicate()
failing = Failing()


class HalfBad:
    """Registers a good model, then something that is not a ModelSpec, and has a matcher that
    must never run because the plugin is rejected whole."""

    @hookimpl
    def kjax_register_models(self, register):
        register(ModelSpec("goodname", "halfbad", "x:y", "x:y"))
        register("not a spec")

    @hookimpl
    def kjax_match_layers(self, model, keras_layers, flax_modules):
        raise AssertionError("a rejected plugin's hook ran")


class RuleThief:
    """Registers a rule for a Keras class the core already handles."""

    @hookimpl
    def kjax_register_layer_rules(self, register):
        from kjax_core import LayerRule

        register(LayerRule("MyLayer", lambda layer, w: {}))
        register(LayerRule("Conv2D", lambda layer, w: {}))


class Misspelled:
    """A typo in a hook name."""

    @hookimpl
    def kjax_register_model(self, register):
        register(ModelSpec("typo", "typo", "x:y", "x:y"))


def own_resnet(name, **fields):
    """A model of the faking plugin's own, built from ResNet50's Keras and Flax code."""
    return ModelSpec(name, "fake", "keras.applications.resnet:ResNet50",
                     "kjax_resnet.model:ResNet50", preprocessing="caffe", **fields)


class BadMatcher:
    """Its matching hook raises, for its own model."""

    @hookimpl
    def kjax_register_models(self, register):
        register(own_resnet("badmatch50"))

    @hookimpl
    def kjax_match_layers(self, model, keras_layers, flax_modules):
        raise RuntimeError("matcher bug")


halfbad = HalfBad()
rulethief = RuleThief()
misspelled = Misspelled()
badmatcher = BadMatcher()


class Twice:
    """Registers one name twice."""

    @hookimpl
    def kjax_register_models(self, register):
        register(ModelSpec("twin", "twice", "x:y", "x:y"))
        register(ModelSpec("twin", "twice", "x:y", "x:y"))


class Wrapper:
    """A matcher written as a pluggy wrapper."""

    @hookimpl(wrapper=True)
    def kjax_match_layers(self, model, keras_layers, flax_modules):
        return (yield)


class OddMatcher:
    """A matcher answering something that is not a mapping, for its own model."""

    @hookimpl
    def kjax_register_models(self, register):
        register(own_resnet("oddmatch50"))

    @hookimpl
    def kjax_match_layers(self, model, keras_layers, flax_modules):
        return 5


class Greedy:
    """A matching hook that forgets to check the model name, and answers nonsense for all."""

    calls = []

    @hookimpl
    def kjax_register_models(self, register):
        register(own_resnet("greedy50"))

    @hookimpl
    def kjax_match_layers(self, model, keras_layers, flax_modules):
        Greedy.calls.append(model)
        return {"no such layer": ("nowhere",)}


class BadMatcherName:
    """A spec naming a matcher that does not exist."""

    @hookimpl
    def kjax_register_models(self, register):
        register(ModelSpec("lucky", "fake", "x:y", "x:y", matcher="by_luck"))


def raising_matcher(keras_layers, flax_modules):
    raise ValueError("spec matcher bug")


class SpecMatcher:
    """A model whose spec names a matcher of the plugin's, which raises."""

    @hookimpl
    def kjax_register_models(self, register):
        register(own_resnet("specmatch50", matcher="fake_plugins:raising_matcher"))


class Missing:
    """A model whose code cannot be imported."""

    @hookimpl
    def kjax_register_models(self, register):
        register(ModelSpec("ghost", "ghost", "no_such_module:Ghost", "no_such_module:Ghost"))


twice = Twice()
wrapper = Wrapper()
oddmatcher = OddMatcher()
greedy = Greedy()
badmatchername = BadMatcherName()
specmatcher = SpecMatcher()
missing = Missing()

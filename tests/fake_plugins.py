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

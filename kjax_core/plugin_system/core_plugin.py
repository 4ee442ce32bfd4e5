"""The core's own hook implementations: built-in layer rules and the default name matching.

Registered through the same plugin manager as every family plugin, before them.
"""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def kjax_register_layer_rules(register):
    from ..conversion.layer_rules import BUILTIN_RULES

    for rule in BUILTIN_RULES:
        register(rule)


@hookimpl(trylast=True)
def kjax_match_layers(model, keras_layers, flax_modules):
    from ..conversion.matching import default_match

    return default_match(keras_layers, flax_modules)

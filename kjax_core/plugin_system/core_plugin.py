"""The core's own hook implementations: the built-in layer rules.

Registered through the same plugin manager as every family plugin, before them. Name matching is
not a hook of the core: each model's :attr:`kjax_core.ModelSpec.matcher` chooses one of the core's
matchers (:mod:`kjax_core.conversion.matching`) or its own.
"""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def kjax_register_layer_rules(register):
    from ..conversion.layer_rules import BUILTIN_RULES

    for rule in BUILTIN_RULES:
        register(rule)


@hookimpl
def kjax_register_layer_ops(register):
    from ..graph.op_table import BUILTIN_OPS

    for op in BUILTIN_OPS:
        register(op)

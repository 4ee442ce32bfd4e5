"""resnetv2 family (work in progress: registers nothing yet)."""

from kjax_core import hookimpl


@hookimpl
def kjax_register_models(register):
    pass

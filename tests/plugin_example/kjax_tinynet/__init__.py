"""An example third-party kjax plugin, declared exactly as the built-in families are.

It registers one model, ``tinynet`` (a Keras functional CNN whose layers keep Keras' automatic
names, and its Flax twin whose submodules have names of their own), and, for its custom Keras layer
``ChannelScale``, a layer rule (its weights) and a layer op (its computation, for ``kjax convert``).
"""

from kjax_core import LayerOp, LayerRule, ModelSpec, hookimpl


@hookimpl
def kjax_register_models(register):
    register(
        ModelSpec(
            name="tinynet",
            family="tinynet",
            keras_constructor="kjax_tinynet.reference:TinyNet",
            flax_module="kjax_tinynet.model:TinyNet",
            input_size=(64, 64, 3),
            min_input_size=8,
            parameters=674,
            preprocessing="none",
            options={"classes": 10, "width": 8},
            weights=(),
        )
    )


def channel_scale(layer, weights):
    """ChannelScale -> kjax_tinynet.model.ChannelScale: one vector ``scale``."""
    return {"params": {"scale": weights.take("scale")}}


@hookimpl
def kjax_register_layer_rules(register):
    register(LayerRule("ChannelScale", channel_scale))


@hookimpl
def kjax_register_layer_ops(register):
    register(LayerOp("ChannelScale", "kjax_tinynet.model:channel_scale_op"))

"""Keras model -> Flax variables (:mod:`.translate` is the straight line through the others):
checking options (:mod:`.options`), building the Keras model (:mod:`.keras_model`), its layers'
weights through the layer rules (:mod:`.keras_layers`, :mod:`.layer_rules`), the Flax twin's
target (:mod:`.flax_side`), matching (:mod:`.matching`) and the strict assembly
(:mod:`.assembly`)."""

"""Any Keras model as Flax (``kjax convert``, :func:`kjax_core.convert`): its graph described as
data (:mod:`.describe`), run by one Flax module (:class:`.module.KerasGraph`) with the registered
layer ops (:mod:`.ops`, listed in :mod:`.op_table`), its weights translated by the layer rules
(:mod:`.converter`). Importing the package imports nothing."""

"""RegNetX and RegNetY: regnetx002 .. regnetx320, regnety002 .. regnety320, as
``tf_keras.applications.regnet`` (Keras 3 dropped RegNet; its reference and weights come from
tf_keras).

Registration only; the Flax module lives in ``kjax_regnet.model`` and is imported on use.
"""

from kjax_core import hookimpl, register_family

# (variant, tf_keras' count_params() with top and 1000 classes)
SIZES = (
    ("x002", 2_705_640), ("x004", 5_194_184), ("x006", 6_229_320), ("x008", 7_296_968),
    ("x016", 9_233_640), ("x032", 15_359_112), ("x040", 22_194_312), ("x064", 26_283_464),
    ("x080", 39_663_112), ("x120", 46_202_440), ("x160", 54_389_704), ("x320", 107_973_576),
    ("y002", 3_183_844), ("y004", 4_371_296), ("y006", 6_084_920), ("y008", 6_293_056),
    ("y016", 11_255_102), ("y032", 19_502_498), ("y040", 20_708_928), ("y064", 30_665_684),
    ("y080", 39_265_812), ("y120", 51_918_928), ("y160", 83_712_956), ("y320", 145_205_058),
)
# tf_keras' keywords besides the common ones: model_name prefixes every layer name (and names the
# imagenet file), so the Flax twin names its modules from it too; its default is the variant.
VARIANTS = tuple(
    (f"regnet{size}", f"RegNet{size.upper()}", parameters,
     {"options": {"model_name": f"regnet{size}", "include_preprocessing": True}})
    for size, parameters in SIZES
)


@hookimpl
def kjax_register_models(register):
    # Rescaling(1/255) is in the graph; regnet.preprocess_input is the identity.
    register_family(register, "regnet", VARIANTS, keras_module="tf_keras.applications.regnet",
                    flax_module="kjax_regnet.model", preprocessing="none")

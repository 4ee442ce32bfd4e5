"""Small helpers shared by the tests."""

import numpy as np
import pytest

from flax.traverse_util import flatten_dict


def run_cli(args, capsys):
    """Run the kjax CLI in this process; returns (exit code, stdout, stderr)."""
    from kjax_core.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def leaves(tree):
    return [np.asarray(v) for _, v in flatten_dict(tree).items()]


def save_legacy_h5(keras_model, path):
    """Write weights the way the Keras Applications files are written (legacy HDF5, by layer)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, keras_model)
    return path


def show(reports):
    """Print what each parity report measured (pytest shows it with -s or on failure)."""
    for report in reports:
        print(report.summary())
    return reports


def assert_same_variables(actual, expected):
    """Two variable trees hold the same paths and bit-identical arrays."""
    got, want = flatten_dict(actual), flatten_dict(expected)
    assert got.keys() == want.keys()
    for path, value in want.items():
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(value), err_msg="/".join(path))


def perturbed(leaf, rng):
    """``leaf`` with each element scaled by a random factor exp(0.3 N(0, 1)) (positive, so a
    variance stays a variance; about 30% off)."""
    return np.asarray(leaf * np.exp(0.3 * rng.standard_normal(np.shape(leaf))), leaf.dtype)


def output_moves(apply, variables, x, expected, other, rng):
    """How far (relative) ``apply``'s output moves from ``expected`` for ``other`` input and for
    each leaf of ``variables`` :func:`perturbed` alone: what a parity check must be able to see."""
    import jax

    from kjax_core.parity import relative_error

    moved = {"another input": relative_error(np.asarray(apply(variables, other)), expected)}
    for path, _ in jax.tree_util.tree_leaves_with_path(variables):
        changed = jax.tree_util.tree_map_with_path(
            lambda p, v: perturbed(np.asarray(v), rng) if p == path else v, variables)
        moved[jax.tree_util.keystr(path)] = relative_error(np.asarray(apply(changed, x)), expected)
    return moved


def random_translation(name, input_shape=None, **options):
    """``(translation, keras_model)``: a Keras model with random weights (no two alike) and its
    translation, which the contract holds to Keras; a file the model writes must translate to
    exactly these numbers (the imagenet path, tested without a float64 comparison of its own)."""
    import kjax_core
    from kjax_core.parity import randomize, reference_model

    _, keras_model = reference_model(name, input_shape=input_shape, prepare=False, **options)
    randomize(keras_model, seed=5)
    return kjax_core.translate(name, None, keras_model=keras_model, **options), keras_model

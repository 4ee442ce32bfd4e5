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

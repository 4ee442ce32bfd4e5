"""Developer tasks. `nox -s tests` is what CI runs (see README); `nox -s full` adds the slow tier."""

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"


def _install(session: nox.Session) -> None:
    # setuptools: the third-party plugin test builds its example package without build isolation.
    session.install("-e", ".[test]", "setuptools")


@nox.session
def tests(session: nox.Session) -> None:
    """The default tier (what CI runs): the contract of every registered model in float64, one
    representative per family at its default size, train mode, pooling, the imagenet path, the
    translator, CLI and plugins. Extra arguments go to pytest, e.g. `nox -s tests -- -k resnet -x`."""
    _install(session)
    session.run("pytest", "-n", "2", *session.posargs)


@nox.session(default=False)
def full(session: nox.Session) -> None:
    """Everything, the slow tier included (big variants at their default size, one Keras model for
    any size, every width at its default size), compiled with XLA's default optimisation."""
    _install(session)
    session.run("pytest", "-m", "slow or not slow", *session.posargs,
                env={"KJAX_TEST_XLA_DEFAULTS": "1"})

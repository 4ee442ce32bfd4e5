"""Developer tasks. `nox -s tests` is what CI runs (see README)."""

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite: parity against Keras, translator, CLI, plugins. Extra arguments go to
    pytest, e.g. `nox -s tests -- -k resnet -x`."""
    # setuptools: the third-party plugin test builds its example package without build isolation.
    session.install("-e", ".[test]", "setuptools")
    session.run("pytest", *session.posargs)

"""``jax.jit`` with XLA compiler options, and XLA's defaults where the options are refused.

Compiler options are XLA's, not JAX's: a jax release whose XLA does not know an option (or one of
its values) refuses it when it compiles, not when ``jax.jit`` is called. Options the predictor
uses for speed (:data:`kjax_core.inference.predictor.EIGEN_CONVOLUTIONS`, an experimental XLA:CPU
flag) must not make a model unusable with such a release.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable


def refused(error: BaseException, options: dict) -> bool:
    """Whether ``error`` is XLA refusing one of ``options`` at compile time: an invalid-argument
    error naming the option (``No such compile option: 'name'``, or ``While setting option
    name, 'value' is not a valid enum value``). Any other failure is not."""
    text = str(error)
    return isinstance(error, RuntimeError) and "INVALID_ARGUMENT" in text and any(
        str(name) in text for name in options)


class JitWithOptions:
    """``jax.jit(fun, compiler_options=options, **jit_kwargs)``, called like it.

    When XLA refuses the options (:func:`refused`), it warns once (``warnings.warn``, naming the
    options and XLA's reason), compiles again without any options and keeps doing so;
    :attr:`compiler_options` then is ``{}``. Any other error passes through unchanged.
    """

    def __init__(self, fun: Callable, compiler_options: dict | None = None, **jit_kwargs: Any):
        import jax

        self.compiler_options = dict(compiler_options or {})
        self._fun, self._jit_kwargs = fun, jit_kwargs
        self._jitted = jax.jit(fun, compiler_options=self.compiler_options or None, **jit_kwargs)

    def __call__(self, *args: Any) -> Any:
        if not self.compiler_options:
            return self._jitted(*args)
        try:
            return self._jitted(*args)
        except RuntimeError as error:
            if not refused(error, self.compiler_options):
                raise
            self._fall_back(error)
        return self._jitted(*args)

    def _fall_back(self, error: BaseException) -> None:
        import jax

        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"XLA refused the compiler options {self.compiler_options} ({reason}); "
            "compiling with XLA's defaults instead",
            RuntimeWarning,
            stacklevel=3,
        )
        self.compiler_options = {}
        self._jitted = jax.jit(self._fun, **self._jit_kwargs)

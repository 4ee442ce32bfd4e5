"""The installed kjax version (a leaf module: the registry and the CLI read it without importing
the package's public API)."""

from importlib import metadata

try:
    __version__ = metadata.version("kjax")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

"""consumer-generation-service: the authoritative record of consumers and their generation.

Writers publish update events to Kafka; the daemon applies them idempotently with
compare-and-swap generation checks.  See ``../shared/DESIGN.md`` for the contract.

``__version__`` is the installed distribution's, which setuptools-scm derived from the
git tags at install time (``pyproject.toml``, ``[tool.setuptools_scm]``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("consumer-generation-service")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

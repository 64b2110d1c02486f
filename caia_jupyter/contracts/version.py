"""caia-jupyter's version: labextension/package.json, written into caia_jupyter/_version.py when built."""

try:
    from .._version import __version__
except ImportError:  # a source tree never built
    from importlib.metadata import version

    __version__ = version("caia-jupyter")

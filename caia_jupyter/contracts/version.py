"""caia-jupyter's version: labextension/package.json, written into _version.py beside this module when built."""

try:
    from . import _version

    __version__ = _version.__version__
except ImportError:  # a source tree never built
    from importlib.metadata import version

    __version__ = version("caia-jupyter")

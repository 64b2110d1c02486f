"""caia-jupyter: federated learning for cancer centers, native to JupyterLab."""

try:
    from ._version import __version__  # written at build time from labextension/package.json
except ImportError:  # a source tree never built
    from importlib.metadata import version

    __version__ = version("caia-jupyter")


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "caia-jupyter"}]


def _jupyter_server_extension_points():
    from .server import CaiaExtension

    return [{"module": "caia_jupyter.server", "app": CaiaExtension}]


def load_ipython_extension(ipython):
    """`%load_ext caia_jupyter`: register `%%federated` and `%federated`."""
    from .kernel.magics import register

    register(ipython)

"""caia-jupyter: federated learning for cancer centers, native to JupyterLab."""

from .contracts.version import __version__  # caia_jupyter.__version__


def _jupyter_labextension_paths():
    return [{"src": "labextension", "dest": "caia-jupyter"}]


def _jupyter_server_extension_points():
    from .server import CaiaExtension

    return [{"module": "caia_jupyter.server", "app": CaiaExtension}]


def load_ipython_extension(ipython):
    """`%load_ext caia_jupyter`: register `%%federated` and `%federated`."""
    from .kernel.magics import register

    register(ipython)

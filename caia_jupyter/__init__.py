"""caia-jupyter: federated learning for cancer centers, native to JupyterLab."""

__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """`%load_ext caia_jupyter`: register `%%federated` and `%federated`."""
    from .kernel.magics import register

    register(ipython)

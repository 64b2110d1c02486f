"""The jupyter_server extension behind the JupyterLab panel: REST handlers over the core."""

from .app import CaiaExtension


def _jupyter_server_extension_points():
    return [{"module": "caia_jupyter.server", "app": CaiaExtension}]

"""What may name a metric. The code at a site chooses its metrics' names, and every surface shows
them to the researcher: a name of free text could carry a row value or a site path, so a name is
a short ASCII identifier. The site, the server's receiver and every reader apply the same rule."""

from __future__ import annotations

import re

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # the whole name: letters, digits, _; at most 64


def valid_name(name) -> bool:
    """Whether `name` may name a metric (a str matching NAME as a whole)."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None

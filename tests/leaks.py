"""A bundle that puts a site's row value into what a failing site would say, and every place the
researcher sees a run: the leak tests on the simulator and on a POC share them."""

from __future__ import annotations

import json

from caia_jupyter import overview
from caia_jupyter.kernel.widgets import RunWidget
from conftest import set_source

MARKER = "PHI-97.25"  # built at the sites from a row value; no file of the bundle holds it
FAILED_IN = {  # entry point -> (the site that fails there, the one line the researcher gets)
    "load_data": ("site-1", "site-1 failed in load_data: the federated code asked ctx.dataset for a dataset this site "
                  "did not release to the bundle; request it with %%federated dataset= and ask the site's reviewers "
                  "to approve it"),
    "train": ("site-2", "site-2 failed in train at round 1: the federated code raised an exception (details kept at the site)"),
}


def leak_a_row_value(nb):
    """site-1 asks for a dataset named after a row value in load_data; site-2's train fails at round 1
    with a message quoting a row value (as an `assert` printing a row would). min_clients=2, so with
    two sites given the failing one ends the run."""
    set_source(nb, "min_clients=1", "min_clients=2")
    set_source(nb, 'frame = ctx.dataset("tiny")',
               'frame = ctx.dataset("tiny")\n    if ctx.site == "site-1":\n        ctx.dataset(f"PHI-{frame[\'x1\'].max()}")')
    set_source(nb, "    x, y = data\n    optimizer", "    x, y = data\n    if ctx.site == 'site-2' and ctx.round == 1:\n"
               "        raise AssertionError(f'PHI-{x[:, 0].max().item()}')\n    optimizer")


def what_the_researcher_sees(run, *cli_outputs) -> str:
    """Everything a run shows its researcher: CLI outputs, the run's files, the handle, the widget, REST."""
    widget = RunWidget(run)
    widget.refresh()
    files = [(run.path / name).read_text() for name in ("outcome.json", "status.json", "sites.json", "site_failures.json")
             if (run.path / name).is_file()]
    return "\n".join([*cli_outputs, *files, json.dumps(run.failures), run.message,
                      json.dumps(widget.get_state(["status", "message", "sites", "reasons"])), json.dumps(overview.run(run))])

"""`%%federated` marks and runs a cell; `%federated COMMAND` mirrors the `caia` CLI.

Errors are one-line UsageErrors; the line magic prints what the CLI prints and returns
the result object (a Bundle, a ValidationResult, a Run, ...) for the next cell to use.
`bundle`, `validate` and `submit` default to this kernel's notebook: `submit` builds the saved
notebook and runs it only if that exact bundle id is validated and, on the simulator, approved.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

from .. import cli
from ..contracts import schema
from ..contracts.errors import CaiaError
from ..researcher import annotations, notebook
from ..site.context import Context
from ..terminal import follow, run_summary

KERNEL_COMMANDS = {
    "context": "a local ctx on the sample data of the federated cells run so far",
    "cells": "the federated cells run in this kernel",
    "help": "this help",
}


@magics_class
class FederatedMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.cells: dict[str, annotations.Header] = {}  # source -> header, in the order first run

    @cell_magic
    def federated(self, line: str, cell: str):
        """Run a cell meant for the sites (and record it). Options: see `%federated help`."""
        try:
            header = annotations.parse_options(line)
            notebook.check_source(cell, "this %%federated cell", line_offset=1)  # line 1 is the %%federated line
        except CaiaError as e:
            raise UsageError(str(e)) from None
        self.cells.pop(cell, None)
        self.cells[cell] = header
        try:  # what bundling would refuse across the cells run so far, said now (a later cell may still fix it)
            self._settings()
        except CaiaError as e:
            print(f"note: {e}; `%federated bundle` refuses the notebook until this is fixed", file=sys.stderr)
        result = self.shell.run_cell(cell)
        if result.error_before_exec or result.error_in_exec:
            error = result.error_in_exec or result.error_before_exec
            # The traceback is shown above; fail the outer cell too, so papermill and "run all" stop.
            raise UsageError(f"the %%federated cell raised {type(error).__name__}: {error}")

    @line_magic("federated")
    def federated_line(self, line: str):
        """%federated COMMAND [ARGS]: the caia CLI in the kernel; `%federated help` lists commands."""
        try:
            tokens = shlex.split(line, comments=True)  # IPython hands a line magic its trailing `# comment` too
        except ValueError as e:
            raise UsageError(f"%federated {line.strip()}: {e}; quote values with spaces") from None
        if not tokens or tokens[0] in KERNEL_COMMANDS:
            return getattr(self, f"_{tokens[0] if tokens else 'help'}")()
        if tokens[0] == "explore" and (len(tokens) == 1 or "=" in tokens[1] or tokens[1].startswith("-")):
            tokens.insert(1, str(current_notebook(self.shell.user_ns, "explore")))  # the request is this notebook's
        if tokens[0] in ("bundle", "validate") and not any(t.endswith(".ipynb") or os.path.isdir(t) for t in tokens[1:]):
            tokens.insert(1, str(current_notebook(self.shell.user_ns, tokens[0])))
        if tokens[0] == "submit" and (len(tokens) == 1 or tokens[1].startswith("-")):
            tokens.insert(1, str(current_notebook(self.shell.user_ns, "submit")))  # what is saved is what runs
        try:
            args = cli.build_parser().parse_args(tokens)
            if tokens[0] in ("submit", "status"):
                args.detach, args.follow = True, False  # the widget (or the text below) follows it
            outcome = cli.run(args, namespace=self.shell.user_ns)
        except CaiaError as e:
            raise UsageError(str(e)) from None
        except SystemExit:  # --help printed its text
            return None
        if tokens[0] in ("submit", "status"):
            return show_run(outcome.value)
        print(outcome.text)
        if outcome.exit_code:
            raise UsageError(outcome.text.splitlines()[0])
        return outcome.value

    def _help(self):
        parser = cli.build_parser()
        print(annotations.usage())
        print("\n%federated COMMAND ...  mirrors `caia COMMAND ...`; bundle/validate default to this notebook\n")
        print(parser.format_help())
        for name, text in KERNEL_COMMANDS.items():
            print(f"%federated {name}: {text}")

    def _settings(self) -> annotations.Settings:
        """The federated cells run so far, merged (`annotations.merge`, which names "cell N" in errors)."""
        return annotations.merge([(f"cell {i + 1}", h) for i, h in enumerate(self.cells.values())])

    def _cells(self):
        return list(self.cells)

    def _context(self) -> Context:
        """A ctx like a site's, on the samples named by the federated cells run so far."""
        if not self.cells:
            raise UsageError("no %%federated cell has run in this kernel yet; run them first")
        try:
            settings = self._settings()
            datasets = {
                d.name: {"path": str(Path(d.sample).resolve()), "columns": schema.columns_of(d.sample)}
                for d in settings.datasets if d.sample
            }
        except CaiaError as e:
            raise UsageError(str(e)) from None
        privacy = settings.privacy.model_dump(mode="json") if settings.privacy else None
        return Context("local", settings.params, datasets, rounds=settings.rounds, privacy=privacy)


def current_notebook(user_ns, command: str = "bundle") -> Path:
    """The notebook this kernel belongs to, as JupyterLab tells the kernel, or papermill run with
    `--inject-input-path` (its PAPERMILL_INPUT_PATH parameter). Raises UsageError naming the fixes,
    the example written for `command` (the %federated command that needs the notebook)."""
    session = os.environ.get("JPY_SESSION_NAME") or user_ns.get("__session__") or user_ns.get("PAPERMILL_INPUT_PATH")
    if not session or not str(session).endswith(".ipynb"):
        example = f"%federated {command} my.ipynb" + (" dataset=..." if command == "explore" else "")
        raise UsageError(f"this kernel does not know its notebook; name it first, e.g. {example}, "
                         "or run papermill with --inject-input-path")
    return Path(session)


def show_run(run):
    """Live widget in JupyterLab; text in a non-interactive kernel (papermill), which waits for the end."""
    if interactive():
        from IPython.display import display

        from .widgets import RunWidget

        display(RunWidget(run).follow())
        return run
    follow(run)
    print(run_summary(run).text)
    return run


def interactive() -> bool:
    """A person is looking: JupyterLab started this kernel for a notebook (CAIA_DISPLAY overrides)."""
    choice = os.environ.get("CAIA_DISPLAY", "")
    return choice == "widget" or (choice != "text" and "JPY_SESSION_NAME" in os.environ)


def register(ipython) -> None:
    ipython.register_magics(FederatedMagics)

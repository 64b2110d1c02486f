"""The live run widget: progress, per-site status, per-round curves of every metric.

A background thread reads the run (the same `Run` every surface uses) and pushes what changed
in one batch (`hold_sync`) every half second; the JavaScript view redraws in place. The
widget state is rebuilt from the run directory, so it works again after a kernel restart.
"""

from __future__ import annotations

import threading
from pathlib import Path

import anywidget
import traitlets

from ..metrics import MetricsReader
from ..runs import FINAL, Run

STATIC = Path(__file__).parent / "static"


class RunWidget(anywidget.AnyWidget):
    _esm = STATIC / "run_widget.js"
    _css = STATIC / "run_widget.css"

    title = traitlets.Unicode("").tag(sync=True)
    status = traitlets.Unicode("starting").tag(sync=True)
    message = traitlets.Unicode("").tag(sync=True)
    rounds_done = traitlets.Int(0).tag(sync=True)
    rounds = traitlets.Int(0).tag(sync=True)
    sites = traitlets.Dict().tag(sync=True)
    reasons = traitlets.Dict().tag(sync=True)
    records = traitlets.List().tag(sync=True)  # [site, round, name, value]

    def __init__(self, run: Run, **kwargs):
        super().__init__(title=f"run {run.path.name}", rounds=run.spec["rounds"], **kwargs)
        self.run = run
        self._reader = MetricsReader(run.path / "metrics.jsonl")
        self._records: list = []
        self._stop = threading.Event()
        self._thread = None

    def refresh(self) -> None:
        """Read what changed in the run and push it to the view in one message."""
        new = self._reader.poll()
        self._records += [[r.site, r.round, r.name, r.value] for r in new]
        done, total = self.run.progress
        reasons = {**self.run.refusals, **self.run.failures}
        with self.hold_sync():
            self.status, self.message = self.run.status, self.run.message
            self.rounds_done, self.rounds = done, total
            self.sites, self.reasons = self.run.sites, reasons
            if new:
                self.records = list(self._records)

    def follow(self, interval: float = 0.5) -> RunWidget:
        """Keep refreshing from a background thread until the run ends."""

        def loop():
            while not self._stop.is_set():
                self.refresh()
                if self.status in FINAL:
                    return
                self._stop.wait(interval)

        self.refresh()
        self._thread = threading.Thread(target=loop, name=f"caia-run-{self.run.path.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

"""The live run widget: progress, per-site status, per-round curves of every metric, and the run's
notes (a metric recorded as missing, an update left out of an average).

A background thread reads the run's state as the panel does (`overview.run`) and pushes what changed
in one batch (`hold_sync`) every half second; the JavaScript view redraws in place. The
widget state is rebuilt from the run directory, so it works again after a kernel restart.
"""

from __future__ import annotations

import threading
from pathlib import Path

import anywidget
import traitlets

from .. import overview
from ..researcher.runs import FINAL, Run

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
    notes = traitlets.List().tag(sync=True)  # what the run left out, one line each (`Run.notes`)
    records = traitlets.List().tag(sync=True)  # [site, round, name, value]
    bundle_id = traitlets.Unicode("").tag(sync=True)  # the bundle the run runs, "sha256:<hex>"
    headline = traitlets.Unicode("").tag(sync=True)  # the run in one line (`Run.headline`)
    tones = traitlets.Dict().tag(sync=True)  # site -> "ok" | "neutral" | "bad" (`Run.tones`)
    global_records = traitlets.List().tag(sync=True)  # [round, name, value]: the sites' weighted mean (`Run.global_metrics`)
    final_round = traitlets.Int(None, allow_none=True).tag(sync=True)  # the round of the final global model, once known

    def __init__(self, run: Run, **kwargs):
        super().__init__(title=f"run {run.path.name}", rounds=run.spec["rounds"], **kwargs)
        self.run = run
        self._stop = threading.Event()
        self._thread = None

    def refresh(self) -> None:
        """Read what changed in the run and push it to the view in one message."""
        state = overview.run(self.run, since=len(self.records))
        with self.hold_sync():
            self.status, self.message = state["status"], state["message"]
            self.rounds_done, self.rounds = state["rounds_done"], state["rounds"]
            self.sites, self.reasons, self.notes = state["sites"], state["reasons"], state["notes"]
            self.bundle_id, self.headline, self.tones = state["bundle_id"], state["headline"], state["tones"]
            self.global_records, self.final_round = state["global"], state["final_round"]
            if state["records"]:
                self.records = self.records + state["records"]

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

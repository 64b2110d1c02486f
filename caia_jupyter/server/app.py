"""REST API of the panel, under /caia/api, and its run websocket.

Every handler is authenticated and then authorized through jupyter_server's authorizer, in
jupyter_server's own terms (reading files is "read" on "contents"; whatever runs or stops
federated code needs what a kernel needs). Inputs are read and checked by `inputs` before the
core sees them; the core runs in a worker thread; every error becomes a one-line JSON answer
{"message", "error"} in one place (`error_reply`).
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import suppress
from http.client import responses
from pathlib import Path

import tornado
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado.websocket import WebSocketClosedError, WebSocketHandler
from traitlets import List, Unicode

from .. import overview
from ..contracts.errors import BundleError, Busy, CaiaError, FlareError, NotebookError, SubmitRefused, ValidationFailed
from ..contracts.version import __version__
from ..researcher.runs import FINAL, Run
from . import inputs

# Error -> HTTP status: bad input is the client's (4xx); a remote NVFLARE failing is 502. The first match wins.
STATUS_OF = [(inputs.OutsideRoot, 403), (PermissionError, 403), (NotebookError, 400), (BundleError, 409),
             (ValidationFailed, 409), (SubmitRefused, 409), (Busy, 409), (FlareError, 502), (CaiaError, 400)]
EXPECTED = tuple(kind for kind, _ in STATUS_OF)

# What each request needs from the authorizer.
reads_api = authorized("read", "api")
reads_files = authorized("read", "contents")
writes_files = authorized("write", "contents")
runs_code = authorized("execute", "kernels")
stops_code = authorized("write", "kernels")  # as shutting down or interrupting a kernel does


class CaiaExtension(ExtensionApp):
    name = "caia_jupyter"
    site_dirs = List(Unicode(), default_value=[], config=True,
                     help="Site directories offered for simulator runs, besides sites/* beside the notebook.")
    poc_workspace = Unicode("", config=True, help="The caia POC workspace for --target poc (default: ~/.caia/poc).")
    reviewer_key = Unicode("", config=True, help="The reviewer's private key file, on this machine and outside the "
                           "server's root, that signs approvals and rejections from the Review view; never sent to "
                           "the browser.")
    review_site = Unicode("", config=True, help="The site directory the reviewer signs for from the Review view.")

    def initialize_settings(self):
        """Log, once at start, which site and reviewer key id the Review view signs for (never the key's path)."""
        from ..reviewer.workbench import signer

        who = signer(self.review_site, self.reviewer_key, Path(self.serverapp.root_dir).expanduser().resolve(),
                     BundleHandler.CONFIGURE)
        if who.can_sign:
            self.log.info("caia: the Review view signs for site %s with reviewer key %s", who.site.name, who.key_id)
        else:
            self.log.info("caia: the Review view cannot sign: %s", who.reason)

    def initialize_handlers(self):
        self.handlers.extend([
            (r"/caia/api/version", VersionHandler),
            (r"/caia/api/notebook", NotebookHandler),
            (r"/caia/api/validate", ValidateHandler),
            (r"/caia/api/review", ReviewHandler),
            (r"/caia/api/runs", RunsHandler),
            (r"/caia/api/run", RunHandler),
            (r"/caia/api/run/stream", RunStreamHandler),
            (r"/caia/api/explore", ExploreHandler),
            (r"/caia/api/bundle", BundleHandler),
            (r"/caia/api/bundle/approve", ApproveHandler),
            (r"/caia/api/bundle/reject", RejectHandler),
        ])


def error_reply(error: BaseException | None, status: int = 500) -> tuple[int, dict]:
    """The HTTP status and the one-line JSON answer {"message", "error"} for `error` (None: tornado's
    own `send_error(status)`). A bug, any other exception, is a 500 that says only that; its
    traceback stays in the server's log."""
    if isinstance(error, EXPECTED):
        status = next(code for kind, code in STATUS_OF if isinstance(error, kind))
        message = f"permission denied on {error.filename}" if isinstance(error, PermissionError) else str(error)
        name = type(error).__name__
    elif isinstance(error, tornado.web.HTTPError) or (error is None and status < 500):
        # tornado's and jupyter_server's own refusals: authentication, authorization, a method not allowed
        status = getattr(error, "status_code", status)
        name = responses.get(status, "Error")
        message = (error and error.get_message()) or name
        name = name.replace(" ", "")
    else:
        status, name = 500, "InternalError"
        message = "caia failed unexpectedly; the Jupyter server's log has the details"
    return status, {"message": " ".join(message.splitlines()), "error": name}


class CaiaMixin:
    """What every caia handler shares: errors as `error_reply` JSON, logged as one line when they are
    the client's (a bug keeps its traceback in the log), and inputs read through `inputs`."""

    def write_error(self, status_code: int, **kwargs) -> None:
        status, reply = error_reply(kwargs.get("exc_info", (None, None, None))[1], status_code)
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(reply))

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, EXPECTED):
            self.log.warning("%s refused: %s", self._request_summary(), error_reply(value)[1]["message"])
        else:
            super().log_exception(typ, value, tb)

    @property
    def root(self) -> Path:
        return Path(self.settings["server_root_dir"]).expanduser().resolve()

    def query(self, model: type[inputs.Query]):
        return inputs.from_query(model, self.request.query_arguments, self.root)

    def body(self, model: type[inputs.Body]):
        return inputs.from_body(model, self.request.body, self.root)


class CaiaHandler(CaiaMixin, ExtensionHandlerMixin, APIHandler):
    def notebook_to_build(self, model: type[inputs.NotebookBody] = inputs.NotebookBody):
        """The body of a request that writes beside its notebook; its output folders must stay in the root."""
        body = self.body(model)
        inputs.refuse_outputs_outside_root(body.path, self.root)
        return body

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    async def reply(self, work, *args) -> None:
        """Run core work off the event loop and answer with its JSON (an error goes to `write_error`)."""
        result = await asyncio.get_running_loop().run_in_executor(None, work, *args)
        self.finish(json.dumps(result, allow_nan=False))  # NaN is no JSON: a bug, a 500, never such a reply

    def runs_dir(self, notebook: Path) -> Path:
        """runs/ beside the notebook; raises OutsideRoot when it leads out of the root (a symlink)."""
        runs_dir = notebook.parent / inputs.RUNS
        if not Path(os.path.realpath(runs_dir)).is_relative_to(self.root):
            raise inputs.OutsideRoot(f"{runs_dir.relative_to(self.root)} leads outside the server's root directory")
        return runs_dir

    def site_dirs(self, notebook: Path) -> list[Path]:
        return overview.site_dirs_near(notebook, self.extensionapp.site_dirs)


class VersionHandler(CaiaHandler):
    @tornado.web.authenticated
    @reads_api
    def get(self):
        self.finish(json.dumps({"version": __version__}))


class NotebookHandler(CaiaHandler):
    @tornado.web.authenticated
    @reads_files
    async def get(self):
        notebook = self.query(inputs.PathQuery).path
        await self.reply(overview.notebook, notebook, self.site_dirs(notebook), self.root)


class ValidateHandler(CaiaHandler):
    @tornado.web.authenticated
    @runs_code
    @writes_files
    async def post(self):
        notebook = self.notebook_to_build().path

        def validate():
            from ..researcher.validation import validate_notebook

            result = validate_notebook(notebook)  # Busy (409) while a validation of this notebook runs
            return {"bundle_id": result.bundle_id, "passed": result.passed, "summary": result.error or "passed",
                    "record": self.relative(result.record_path)}

        await self.reply(validate)


class ReviewHandler(CaiaHandler):
    @tornado.web.authenticated
    @writes_files  # builds and renders; runs no federated code
    async def post(self):
        notebook = self.notebook_to_build().path

        def review():
            from ..researcher.compose import build
            from ..reviewer.review import render

            return {"review": self.relative(render(build(notebook).path))}

        await self.reply(review)


class RunsHandler(CaiaHandler):
    @tornado.web.authenticated
    @reads_files
    async def get(self):
        """The notebook's runs in runs/ beside it, newest first (`overview.runs`), run folders relative to the root."""
        notebook = self.query(inputs.NotebookQuery).path

        def listed():
            from ..researcher.compose import default_output

            listed = []
            for entry in overview.runs(self.runs_dir(notebook), default_output(notebook)):  # this notebook's runs only
                real = Path(os.path.realpath(entry["run"]))
                if real.is_relative_to(self.root):  # a run folder linked from elsewhere is not the server's to show
                    listed.append({**entry, "run": real.relative_to(self.root).as_posix()})
            return {"runs": listed}

        await self.reply(listed)

    @tornado.web.authenticated
    @runs_code
    @writes_files
    async def post(self):
        body = self.notebook_to_build(inputs.SubmitBody)

        def submit():
            from ..targets.submit import submit as start

            sites = [str(p) for p in self.site_dirs(body.path)] if body.target == "simulator" else body.sites
            run = start(body.path, sites, target=body.target, runs_root=body.path.parent / inputs.RUNS,
                        poc_workspace=self.extensionapp.poc_workspace or None, concurrent=body.concurrent,
                        relative_to=self.root)
            return {"run": self.relative(run.path), **overview.run(run.path)}

        await self.reply(submit)


class ExploreHandler(CaiaHandler):
    @tornado.web.authenticated
    @reads_files
    async def get(self):
        """The notebook's last exploration in runs/ beside it (`overview.exploration`)."""
        notebook = self.query(inputs.NotebookQuery).path
        self.runs_dir(notebook)
        await self.reply(overview.exploration, notebook, self.root)


class RunHandler(CaiaHandler):
    @tornado.web.authenticated
    @reads_files
    async def get(self):
        query = self.query(inputs.RunQuery)
        await self.reply(overview.run, query.path, query.since)

    @tornado.web.authenticated
    @stops_code
    @writes_files
    async def delete(self):
        run = self.query(inputs.PathQuery).path

        def abort():
            from ..researcher.runs import Run

            Run(run).abort()
            return overview.run(run)

        await self.reply(abort)


class BundleHandler(CaiaHandler):
    """The Review view of a bundle folder or a packed .zip (`workbench.view`), with this server's signer."""

    CONFIGURE = ("start the server with --CaiaExtension.reviewer_key=<your private key> "
                 "--CaiaExtension.review_site=<the site directory you sign for>")

    def signer(self):
        from ..reviewer.workbench import signer

        app = self.extensionapp
        return signer(app.review_site, app.reviewer_key, self.root, self.CONFIGURE)

    @tornado.web.authenticated
    @reads_files
    async def get(self):
        path = self.query(inputs.BundleQuery).path
        shown = self.relative(path)  # errors name it with its folder, as the caller sees it

        def view():
            from ..reviewer.workbench import view

            return {"path": shown, **view(path, self.signer(), shown)}

        await self.reply(view)


class ApproveHandler(BundleHandler):
    @tornado.web.authenticated
    @writes_files
    async def post(self):
        body = self.body(inputs.ApproveBody)

        def approve():
            from ..reviewer.workbench import approve

            return approve(body.path, body.bundle_id, dict(body.datasets), self.signer(), body.expires_in_days)

        await self.reply(approve)


class RejectHandler(BundleHandler):
    @tornado.web.authenticated
    @writes_files
    async def post(self):
        body = self.body(inputs.RejectBody)

        def reject():
            from ..reviewer.workbench import reject

            return reject(body.path, body.bundle_id, body.reason, self.signer())

        await self.reply(reject)


class RunStreamHandler(CaiaMixin, ExtensionHandlerMixin, WebSocketHandler, JupyterHandler):
    """Live run updates: a JSON message per change (status, sites, new records) until the run ends;
    an error is one last message {"message", "error"}."""

    @ws_authenticated
    @reads_files
    async def get(self, *args, **kwargs):
        self._run = self.query(inputs.PathQuery).path  # refused before the upgrade
        return await super().get(*args, **kwargs)

    def open(self):
        self._pusher = asyncio.ensure_future(self._push(self._run))

    def on_close(self):
        pusher = getattr(self, "_pusher", None)
        if pusher is not None:
            pusher.cancel()

    async def _push(self, run_dir: Path):
        loop, count, last = asyncio.get_running_loop(), 0, None
        try:
            run = await loop.run_in_executor(None, Run, run_dir)  # one handle: each poll reads only new records
            while True:
                state = await loop.run_in_executor(None, overview.run, run, count)
                count = state["count"]
                digest = json.dumps({k: v for k, v in state.items() if k not in ("since", "count")}, allow_nan=False)
                if digest != last:
                    last = digest
                    await self.write_message(json.dumps(state, allow_nan=False))
                if state["status"] in FINAL:
                    return self.close()
                await asyncio.sleep(0.5)
        except WebSocketClosedError:
            return
        except Exception as e:
            if not isinstance(e, EXPECTED):
                self.log.error("the run stream of %s failed", run_dir, exc_info=True)
            with suppress(WebSocketClosedError):
                await self.write_message(json.dumps(error_reply(e)[1]))
            self.close()

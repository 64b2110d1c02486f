"""REST API of the panel, under /caia/api. Every handler is authenticated, runs the core in a
worker thread, and maps domain errors to HTTP codes in one place (`_answer`)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import tornado
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado.websocket import WebSocketHandler
from traitlets import List, Unicode

from .. import __version__, overview
from ..errors import BundleError, CaiaError, FlareError, NotebookError, ValidationFailed
from ..runs import FINAL, Run

# Domain error -> HTTP status: bad input is the client's (4xx); a remote NVFLARE failing is 502.
STATUS_OF = [(NotebookError, 400), (BundleError, 409), (ValidationFailed, 409), (FlareError, 502), (CaiaError, 400)]


class CaiaExtension(ExtensionApp):
    name = "caia_jupyter"
    site_dirs = List(Unicode(), default_value=[], config=True,
                     help="Site directories offered for simulator runs, besides sites/* beside the notebook.")
    poc_workspace = Unicode("", config=True, help="The caia POC workspace for --target poc (default: ~/.caia/poc).")

    def initialize_handlers(self):
        self.handlers.extend([
            (r"/caia/api/version", VersionHandler),
            (r"/caia/api/notebook", NotebookHandler),
            (r"/caia/api/validate", ValidateHandler),
            (r"/caia/api/review", ReviewHandler),
            (r"/caia/api/runs", RunsHandler),
            (r"/caia/api/run", RunHandler),
            (r"/caia/api/run/stream", RunStreamHandler),
        ])


def server_path(settings: dict, relative: str | None) -> Path:
    """A path under the server's root directory; anything outside it is refused."""
    if not relative:
        raise tornado.web.HTTPError(400, reason="a 'path' is required")
    root = Path(settings["server_root_dir"]).expanduser().resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise tornado.web.HTTPError(403, reason=f"{relative} is outside the server's root directory")
    return path


class CaiaHandler(ExtensionHandlerMixin, APIHandler):
    def local(self, relative: str | None) -> Path:
        return server_path(self.settings, relative)

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(Path(self.settings["server_root_dir"]).expanduser().resolve()).as_posix()

    async def _answer(self, work, *args):
        """Run core work off the event loop; finish with its JSON, or with the mapped error code."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, work, *args)
        except CaiaError as e:
            status = next(code for kind, code in STATUS_OF if isinstance(e, kind))
            self.set_status(status)
            return self.finish(json.dumps({"message": str(e), "error": type(e).__name__}))
        self.finish(json.dumps(result))

    def site_dirs(self, notebook: Path) -> list[Path]:
        return overview.site_dirs_near(notebook, self.extensionapp.site_dirs)


class VersionHandler(CaiaHandler):
    @tornado.web.authenticated
    def get(self):
        self.finish(json.dumps({"version": __version__}))


class NotebookHandler(CaiaHandler):
    @tornado.web.authenticated
    async def get(self):
        notebook = self.local(self.get_argument("path", None))
        await self._answer(overview.notebook, notebook, self.site_dirs(notebook))


class ValidateHandler(CaiaHandler):
    @tornado.web.authenticated
    async def post(self):
        notebook = self.local((self.get_json_body() or {}).get("path"))

        def validate():
            from ..bundle import build
            from ..validation import validate as run_validation

            result = run_validation(build(notebook))
            return {"bundle_id": result.bundle_id, "passed": result.passed, "summary": result.error or "passed",
                    "record": self.relative(result.record_path)}

        await self._answer(validate)


class ReviewHandler(CaiaHandler):
    @tornado.web.authenticated
    async def post(self):
        notebook = self.local((self.get_json_body() or {}).get("path"))

        def review():
            from ..bundle import build
            from ..review import render

            return {"review": self.relative(render(build(notebook).path))}

        await self._answer(review)


class RunsHandler(CaiaHandler):
    @tornado.web.authenticated
    async def post(self):
        body = self.get_json_body() or {}
        notebook = self.local(body.get("path"))
        target = body.get("target", "simulator")

        def submit():
            from ..bundle import default_output
            from ..submit import submit as start

            sites = [str(p) for p in self.site_dirs(notebook)] if target == "simulator" else body.get("sites")
            run = start(default_output(notebook), sites, target=target, runs_root=notebook.parent / "runs",
                        poc_workspace=self.extensionapp.poc_workspace or None)
            return {"run": self.relative(run.path), **overview.run(run.path)}

        await self._answer(submit)


class RunHandler(CaiaHandler):
    @tornado.web.authenticated
    async def get(self):
        run = self.local(self.get_argument("path", None))
        await self._answer(overview.run, run, int(self.get_argument("since", "0")))

    @tornado.web.authenticated
    async def delete(self):
        run = self.local(self.get_argument("path", None))

        def abort():
            from ..runs import Run

            Run(run).abort()
            return overview.run(run)

        await self._answer(abort)


class RunStreamHandler(ExtensionHandlerMixin, WebSocketHandler, JupyterHandler):
    """Live run updates: a JSON message per change (status, sites, new records) until the run ends."""

    async def get(self, *args, **kwargs):
        if self.current_user is None:
            raise tornado.web.HTTPError(403)
        self._run = server_path(self.settings, self.get_argument("path", None))  # refused before the upgrade
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
                digest = json.dumps({k: v for k, v in state.items() if k not in ("since", "count")})
                if digest != last:
                    last = digest
                    await self.write_message(json.dumps(state))
                if state["status"] in FINAL:
                    return self.close()
                await asyncio.sleep(0.5)
        except CaiaError as e:
            await self.write_message(json.dumps({"message": str(e), "error": type(e).__name__}))
            return self.close()
        except tornado.websocket.WebSocketClosedError:
            return

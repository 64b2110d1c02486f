"""The server extension behind the panel, in-process (pytest-jupyter's jp_fetch)."""

import asyncio
import json
import os
import subprocess

import nbformat
import pytest
from jupyter_server.auth.authorizer import Authorizer
from tornado.httpclient import HTTPClientError

import corpus
from caia_jupyter.researcher import compose, history
from conftest import approve, make_site, set_source, write_corpus

ENDPOINTS = [("version", "GET"), ("notebook", "GET"), ("validate", "POST"), ("review", "POST"),
             ("runs", "POST"), ("runs", "GET"), ("run", "GET"), ("run", "DELETE"), ("explore", "GET")]


def server_config(authorizer=None):
    config = {"ServerApp": {"jpserver_extensions": {"caia_jupyter": True}}}
    if authorizer:
        config["ServerApp"]["authorizer_class"] = authorizer
    return config


@pytest.fixture
def jp_server_config():
    return server_config()


@pytest.fixture
def notebook(jp_root_dir):
    path = corpus.write("good", jp_root_dir / "study")
    return path.relative_to(jp_root_dir).as_posix()


async def get(jp_fetch, endpoint, **params):
    response = await jp_fetch("caia", "api", endpoint, params=params)
    return json.loads(response.body)


async def post(jp_fetch, endpoint, body):
    response = await jp_fetch("caia", "api", endpoint, method="POST", body=json.dumps(body), request_timeout=600)
    return json.loads(response.body)


async def test_every_endpoint_requires_authentication(jp_fetch):
    for endpoint, method in ENDPOINTS:
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("caia", "api", endpoint, method=method, headers={"Authorization": ""},
                           **({"body": "{}"} if method == "POST" else {}))
        assert info.value.code == 403, endpoint


async def test_the_panel_sees_the_same_bundle_id_as_the_cli(jp_fetch, jp_root_dir, notebook):
    state = await get(jp_fetch, "notebook", path=notebook)
    assert state["bundle_id"] == compose.build(jp_root_dir / notebook).id
    assert [c["first_line"] for c in state["cells"]][:2] == ["import torch", "def build_model():"]
    assert state["validation"] == {"state": "none", "summary": "not validated for this bundle id", "cell": None, "line": None}
    assert state["job"] == {"rounds": 2, "min_clients": 1, "params": {"lr": 0.1}}


async def test_approvals_per_site_beside_the_notebook(jp_fetch, jp_root_dir, notebook):
    study = (jp_root_dir / notebook).parent
    first = make_site(study / "sites", "site-1")
    make_site(study / "sites", "site-2")
    state = await get(jp_fetch, "notebook", path=notebook)
    approve(first, state["bundle_id"], {"tiny": "tiny"})
    state = await get(jp_fetch, "notebook", path=notebook)
    assert [(s["name"], s["approval"]) for s in state["sites"]] == [("site-1", "approved"), ("site-2", "none")]
    assert state["sites"][0]["detail"] == "tiny=tiny"


@pytest.mark.parametrize("name, code, fragment", [
    ("not_json", 400, "not valid JSON"),
    ("magic_inside", 400, "uses IPython syntax"),
    ("missing_evaluate", 400, "do not define evaluate"),
])
async def test_bad_notebooks_are_4xx_with_one_line(jp_fetch, jp_root_dir, name, code, fragment):
    path = corpus.write(name, jp_root_dir / "bad").relative_to(jp_root_dir).as_posix()
    with pytest.raises(HTTPClientError) as info:
        await get(jp_fetch, "notebook", path=path)
    assert info.value.code == code
    body = json.loads(info.value.response.body)
    assert fragment in body["message"] and "\n" not in body["message"]


async def test_paths_outside_the_root_and_missing_files(jp_fetch, jp_root_dir, notebook):
    with pytest.raises(HTTPClientError) as info:
        await get(jp_fetch, "notebook", path="../../etc/passwd")
    assert info.value.code == 403
    with pytest.raises(HTTPClientError) as info:
        await get(jp_fetch, "notebook", path="study/missing.ipynb")
    assert info.value.code == 400 and "does not exist" in json.loads(info.value.response.body)["message"]
    with pytest.raises(HTTPClientError) as info:
        await post(jp_fetch, "runs", {"path": notebook})
    short = compose.compose(jp_root_dir / notebook).id[7:19]
    assert info.value.code == 409 and json.loads(info.value.response.body) == {
        "message": f"bundle {short} is not validated: run Validate (caia validate {notebook})", "error": "SubmitRefused"}


async def test_the_run_stream_refuses_paths_outside_the_root_before_upgrading(jp_ws_fetch):
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("caia", "api", "run", "stream", params={"path": "../../etc"})
    assert info.value.code == 403
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("caia", "api", "run", "stream")
    assert info.value.code == 400


async def test_the_run_stream_reports_a_directory_that_is_no_run(jp_ws_fetch, jp_root_dir, notebook):
    socket = await jp_ws_fetch("caia", "api", "run", "stream", params={"path": "study"})
    message = json.loads(await asyncio.wait_for(socket.read_message(), timeout=30))
    assert message["error"] == "CaiaError" and "not a caia run directory" in message["message"]
    assert await asyncio.wait_for(socket.read_message(), timeout=30) is None


async def test_the_runs_list_beside_a_notebook_skips_foreign_folders_and_never_fails(jp_fetch, jp_root_dir, notebook,
                                                                                     tmp_path):
    runs = jp_root_dir / "study" / "runs"
    assert await get(jp_fetch, "runs", path=notebook) == {"runs": []}  # no runs/ yet
    finished_run(runs / "20260101T000000-a")
    (runs / "20260101T000000-a" / "status.json").write_text(json.dumps({"phase": "finished", "rounds_done": 2,
                                                                         "sites": ["site-1"]}))
    (runs / "photos").mkdir()  # no run.json: not a run
    for name, files in MALFORMED_RUNS.items():
        (runs / name).mkdir()
        for file, content in {"run.json": json.dumps(RUN_SPEC), **files}.items():
            (runs / name / file).write_text(content)
    outside = finished_run(tmp_path / "elsewhere")
    (runs / "linked").symlink_to(outside)  # a run folder linked from outside the root is not listed
    listed = (await get(jp_fetch, "runs", path=notebook))["runs"]
    assert {entry["run"] for entry in listed} == {f"study/runs/{name}" for name in [*MALFORMED_RUNS, "20260101T000000-a"]}
    by_run = {entry["run"].split("/")[-1]: entry for entry in listed}
    assert by_run["20260101T000000-a"]["status"] == "finished"
    assert by_run["20260101T000000-a"]["headline"] == "finished: 2 rounds with site-1"
    assert {by_run[name]["status"] for name in MALFORMED_RUNS if name.startswith("run-json")} == {"unreadable"}
    assert all(set(entry) == {"run", "bundle_id", "short_id", "target", "started_at", "duration_s", "status",
                              "headline", "final", "global"} for entry in listed)


RUN_SPEC = {"target": "simulator", "bundle_id": "sha256:" + "0" * 64, "sites": {"site-1": ""}, "rounds": 2, "min_clients": 1}
MALFORMED_RUNS = {  # file -> content; each a run directory damaged or received from an untrusted server
    "run-json-a-list": {"run.json": "[1]"},
    "run-json-sites-not-names": {"run.json": json.dumps({"rounds": 2, "sites": [["site-1"]], "min_clients": 1})},
    "run-json-without-rounds": {"run.json": json.dumps({"sites": {}})},
    "run-json-not-json": {"run.json": "{"},
    "sites-json-entries-not-objects": {"sites.json": json.dumps({"site-1": ["refused"]})},
    "outcome-without-status": {"outcome.json": json.dumps({"completed_sites": 5})},
    "outcome-a-list": {"outcome.json": "[]"},
    "status-rounds-as-text": {"status.json": json.dumps({"phase": "training", "rounds_done": "two", "rounds": [2]})},
    "failed-sites-not-an-object": {"outcome.json": json.dumps({"status": "failed", "failed_sites": ["site-1"]})},
    "metrics-lines-malformed": {"metrics.jsonl": '{"site": 1}\n[]\nnot json\n{"site": "site-1", "round": "0", "name": "a", "value": 1, "time": 0}\n'},
    "metrics-record-with-an-extra-field": {"metrics.jsonl": json.dumps({"site": "site-1", "round": 0, "name": "loss", "value": 1.0,
                                                                        "time": 0.0, "note": "from the server"}) + "\n"},
}


@pytest.mark.parametrize("name", sorted(MALFORMED_RUNS))
async def test_a_malformed_run_directory_is_never_a_500(jp_fetch, jp_ws_fetch, jp_root_dir, name):
    run = jp_root_dir / "runs" / name
    run.mkdir(parents=True)
    files = {"run.json": json.dumps(RUN_SPEC), **MALFORMED_RUNS[name]}
    for file, content in files.items():
        (run / file).write_text(content)
    for method in ("GET", "DELETE"):
        try:
            response = await jp_fetch("caia", "api", "run", method=method, params={"path": f"runs/{name}"})
            assert set(json.loads(response.body)) >= {"status", "sites", "records"}
        except HTTPClientError as e:
            assert 400 <= e.code < 500, (method, e.code)
    socket = await jp_ws_fetch("caia", "api", "run", "stream", params={"path": f"runs/{name}"})
    message = json.loads(await asyncio.wait_for(socket.read_message(), timeout=30))
    if name.startswith("run-json"):
        assert message["error"] == "CaiaError" and "is not a caia run description" in message["message"]
    else:
        assert message["sites"] == {"site-1": message["sites"]["site-1"]} and "status" in message
    socket.close()


def strict_json(text):
    """JSON as a browser's JSON.parse reads it: NaN or Infinity is no JSON."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


async def test_a_run_is_valid_json_with_its_notes_whatever_its_files_hold(jp_fetch, jp_ws_fetch, jp_root_dir):
    run = jp_root_dir / "runs" / "forged"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({**RUN_SPEC, "sites": {"site-1": "", "site-2": ""}}))
    (run / "outcome.json").write_text(json.dumps({"status": "finished", "message": "", "completed_sites": ["site-1", "site-2"]}))
    (run / "status.json").write_text(json.dumps({"phase": "finished", "excluded": [
        {"site": ["site-1"], "round": 1, "reason": "no_examples"}, {"site": "site-2", "round": 1, "reason": "no_examples"}]}))
    line = '{"site": "%s", "round": 2, "name": "%s", "value": %s, "time": 1}\n'
    (run / "metrics.jsonl").write_text(line % ("site-1", "acc", "NaN") + line % ("site-2", "acc", "Infinity")
                                       + line % ("site-1", "num_samples", "1e308") + line % ("site-2", "num_samples", "1e308")
                                       + line % ("site-9", "acc", "0.5"))
    notes = ["site-2's update of round 1 was left out of the average: it trained on no examples (num_samples 0: no rows, "
             "or none left after load_data)",
             "site-1's acc at round 2 was not a finite number; it is recorded as missing",
             "site-2's acc at round 2 was not a finite number; it is recorded as missing"]
    response = await jp_fetch("caia", "api", "run", params={"path": "runs/forged"})
    state = strict_json(response.body)
    assert state["notes"] == notes
    assert state["records"] == [["site-1", 2, "acc", None], ["site-2", 2, "acc", None],
                                ["site-1", 2, "num_samples", 1e308], ["site-2", 2, "num_samples", 1e308]]
    socket = await jp_ws_fetch("caia", "api", "run", "stream", params={"path": "runs/forged"})
    assert strict_json(await asyncio.wait_for(socket.read_message(), timeout=30))["notes"] == notes
    socket.close()


@pytest.mark.slow
async def test_validate_submit_and_stream_a_run(jp_fetch, jp_ws_fetch, jp_root_dir, notebook):
    study = (jp_root_dir / notebook).parent
    result = await post(jp_fetch, "validate", {"path": notebook})
    assert result["passed"] is True
    state = await get(jp_fetch, "notebook", path=notebook)
    assert state["validation"]["state"] == "passed"
    for name in ("site-1", "site-2"):
        approve(make_site(study / "sites", name), state["bundle_id"], {"tiny": "tiny"})
    review = await post(jp_fetch, "review", {"path": notebook})
    assert (jp_root_dir / review["review"]).is_file()

    started = await post(jp_fetch, "runs", {"path": notebook, "target": "simulator"})
    assert started["run"].startswith("study/runs/") and started["status"] in ("starting", "running")
    socket = await jp_ws_fetch("caia", "api", "run", "stream", params={"path": started["run"]})
    messages = []
    while True:
        message = await asyncio.wait_for(socket.read_message(), timeout=300)
        if message is None:
            break
        messages.append(json.loads(message))
    assert messages[-1]["status"] == "finished", messages[-1]["message"]
    streamed = [r for m in messages for r in m["records"]]
    snapshot = await get(jp_fetch, "run", path=started["run"])
    assert sorted(map(tuple, streamed)) == sorted(map(tuple, snapshot["records"])) and streamed
    assert snapshot["sites"] == {"site-1": "done", "site-2": "done"}
    last = messages[-1]
    assert last["headline"] == "finished: 2 rounds with site-1, site-2" and last["final_round"] == 2
    assert last["tones"] == {"site-1": "ok", "site-2": "ok"} and last["bundle_id"] == state["bundle_id"]
    assert {r for r, name, _ in last["global"] if name == "accuracy"} == {0, 1, 2}


@pytest.mark.slow
async def test_two_validate_clicks_run_one_and_the_server_keeps_working(jp_fetch, jp_root_dir, notebook):
    cwd = os.getcwd()
    answers = await asyncio.gather(*(status_of(jp_fetch, "validate", "POST", body=json.dumps({"path": notebook}))
                                     for _ in range(2)))
    assert sorted(code for code, _ in answers) == [200, 409]
    passed, refused = sorted(answers, key=lambda a: a[0])
    assert passed[1]["passed"] is True
    assert refused[1] == {"message": "a validation of good.ipynb is already running; wait for it to finish", "error": "Busy"}
    assert os.getcwd() == cwd
    assert (await post(jp_fetch, "validate", {"path": notebook}))["passed"] is True
    assert (jp_root_dir / (await post(jp_fetch, "review", {"path": notebook}))["review"]).is_file()
    assert os.getcwd() == cwd


@pytest.mark.slow
async def test_what_is_shown_is_what_runs(jp_fetch, jp_root_dir, notebook):
    """Edit after validation: Submit refuses the new id; validated and approved, one run of it at a time."""
    study = jp_root_dir / notebook
    site = make_site(study.parent / "sites", "site-1")
    assert (await post(jp_fetch, "validate", {"path": notebook}))["passed"] is True
    approve(site, (await get(jp_fetch, "notebook", path=notebook))["bundle_id"], {"tiny": "tiny"})
    edit_notebook(study, lambda nb: set_source(nb, "param.lr=0.1", "param.lr=0.2"))
    state = await get(jp_fetch, "notebook", path=notebook)
    assert state["sites"][0]["approval"] == "older" and state["changes"]["summary"] == ["param lr: 0.1 -> 0.2"]
    code, body = await status_of(jp_fetch, "runs", "POST", body=json.dumps({"path": notebook}))
    assert (code, body) == (409, {"message": state["submit"]["reason"], "error": "SubmitRefused"})
    assert body["message"] == f"bundle {state['short_id']} is not validated: run Validate (caia validate {notebook})"

    assert (await post(jp_fetch, "validate", {"path": notebook}))["passed"] is True
    code, body = await status_of(jp_fetch, "runs", "POST", body=json.dumps({"path": notebook}))
    assert code == 409 and body["message"] == (f"site-1 has not approved bundle {state['short_id']}; its reviewer runs: "
                                               "caia approve study/bundles/good --site study/sites/site-1 --key KEY --dataset tiny")
    approve(site, state["bundle_id"], {"tiny": "tiny"})
    assert (await get(jp_fetch, "notebook", path=notebook))["submit"] == {"ready": True, "reason": ""}
    answers = await asyncio.gather(*(status_of(jp_fetch, "runs", "POST", body=json.dumps({"path": notebook}))
                                     for _ in range(2)))
    assert sorted(code for code, _ in answers) == [200, 409]
    started, refused = sorted(answers, key=lambda a: a[0])
    run = started[1]["run"]
    assert started[1]["bundle_id"] == state["bundle_id"] and started[1]["short_id"] == state["short_id"]
    assert refused[1]["message"] == (f"bundle {state['short_id']} is already running in {run}; wait for it or abort it "
                                     "(a second run at once: caia submit --concurrent)")
    assert (await get(jp_fetch, "notebook", path=notebook))["live_run"] == run
    second = await post(jp_fetch, "runs", {"path": notebook, "concurrent": True})
    assert second["run"] != run
    for folder in (second["run"], run):
        await jp_fetch("caia", "api", "run", method="DELETE", params={"path": folder})
    assert (await get(jp_fetch, "notebook", path=notebook))["live_run"] is None


@pytest.mark.slow
async def test_a_failing_validation_names_the_cell_and_the_line_as_the_editor_numbers_them(jp_fetch, jp_root_dir, notebook):
    edit_notebook(jp_root_dir / notebook, lambda nb: set_source(nb, "    x, y = data\n    optimizer",
                                                                 "    x, y = data\n    raise ValueError('boom')\n    optimizer"))
    assert (await post(jp_fetch, "validate", {"path": notebook}))["passed"] is False
    state = await get(jp_fetch, "notebook", path=notebook)
    source = nbformat.read(jp_root_dir / notebook, as_version=4).cells[state["validation"]["cell"]].source
    assert state["validation"]["state"] == "failed" and state["validation"]["line"] == 4
    assert source.splitlines()[0].startswith("%%federated") and source.splitlines()[3] == "    raise ValueError('boom')"
    assert state["submit"]["ready"] is False and "failed validation" in state["submit"]["reason"]


# -- authorization: jupyter_server's authorizer decides, in its own terms ---------------------------------


class ReadOnlyAuthorizer(Authorizer):
    """Allows reading anything and nothing else."""

    def is_authorized(self, handler, user, action, resource):
        return action == "read"


class NoAccessAuthorizer(Authorizer):
    """Authenticated users may do nothing."""

    def is_authorized(self, handler, user, action, resource):
        return False


class RecordingAuthorizer(Authorizer):
    """Allows everything and remembers what it was asked."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.asked = []

    def is_authorized(self, handler, user, action, resource):
        self.asked.append((action, resource))
        return True


def finished_run(folder):
    """A run folder as the launcher leaves it once a run has finished."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"target": "simulator", "bundle_id": "sha256:" + "0" * 64,
                                                 "sites": {"site-1": "/nowhere"}, "rounds": 2, "min_clients": 1}))
    (folder / "outcome.json").write_text(json.dumps({"status": "finished", "message": "", "completed_sites": ["site-1"]}))
    return folder


async def status_of(jp_fetch, endpoint, method, params=None, body=None):
    try:
        response = await jp_fetch("caia", "api", endpoint, method=method, params=params or {},
                                  request_timeout=600, **({"body": body} if method in ("POST", "PUT") else {}))
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body)
    return response.code, json.loads(response.body)


class TestAuthorizerIsAsked:
    @pytest.fixture
    def jp_server_config(self):
        return server_config(RecordingAuthorizer)

    @pytest.mark.parametrize("endpoint, method, needs", [
        ("version", "GET", [("read", "api")]),
        ("notebook", "GET", [("read", "contents")]),
        ("run", "GET", [("read", "contents")]),
        ("runs", "GET", [("read", "contents")]),
        ("explore", "GET", [("read", "contents")]),
        ("validate", "POST", [("execute", "kernels"), ("write", "contents")]),
        ("review", "POST", [("write", "contents")]),
        ("runs", "POST", [("execute", "kernels"), ("write", "contents")]),
        ("run", "DELETE", [("write", "kernels"), ("write", "contents")]),
    ], ids=lambda v: v if isinstance(v, str) else None)
    async def test_each_endpoint_asks_for_what_it_does(self, jp_fetch, jp_serverapp, endpoint, method, needs):
        await status_of(jp_fetch, endpoint, method, body="{}")  # refused as bad input, after authorization
        assert jp_serverapp.authorizer.asked == needs

    async def test_the_run_stream_asks_to_read(self, jp_ws_fetch, jp_serverapp, jp_root_dir):
        finished_run(jp_root_dir / "study" / "runs" / "r1")
        socket = await jp_ws_fetch("caia", "api", "run", "stream", params={"path": "study/runs/r1"})
        assert json.loads(await asyncio.wait_for(socket.read_message(), timeout=30))["status"] == "finished"
        assert jp_serverapp.authorizer.asked == [("read", "contents")]


class TestReadOnlyUser:
    @pytest.fixture
    def jp_server_config(self):
        return server_config(ReadOnlyAuthorizer)

    async def test_reads_work(self, jp_fetch, jp_ws_fetch, jp_root_dir, notebook):
        finished_run(jp_root_dir / "study" / "runs" / "r1")
        assert (await get(jp_fetch, "version"))["version"]
        assert (await get(jp_fetch, "notebook", path=notebook))["bundle_id"].startswith("sha256:")
        assert (await get(jp_fetch, "run", path="study/runs/r1"))["status"] == "finished"
        assert [r["run"] for r in (await get(jp_fetch, "runs", path=notebook))["runs"]] == ["study/runs/r1"]
        assert await get(jp_fetch, "explore", path=notebook) == {"exploration": None}
        socket = await jp_ws_fetch("caia", "api", "run", "stream", params={"path": "study/runs/r1"})
        assert json.loads(await asyncio.wait_for(socket.read_message(), timeout=30))["status"] == "finished"

    @pytest.mark.parametrize("endpoint, method", [("validate", "POST"), ("review", "POST"), ("runs", "POST"),
                                                  ("run", "DELETE")])
    async def test_nothing_that_runs_code_or_writes(self, jp_fetch, jp_root_dir, notebook, endpoint, method):
        run = finished_run(jp_root_dir / "study" / "runs" / "r1")
        before = sorted(p.relative_to(jp_root_dir) for p in jp_root_dir.rglob("*"))
        code, reply = await status_of(jp_fetch, endpoint, method, params={"path": "study/runs/r1"},
                                      body=json.dumps({"path": notebook}))
        assert code == 403 and reply["error"] == "Forbidden" and "not authorized" in reply["message"]
        assert sorted(p.relative_to(jp_root_dir) for p in jp_root_dir.rglob("*")) == before
        assert json.loads((run / "outcome.json").read_text())["status"] == "finished"


class TestUserWithoutRead:
    @pytest.fixture
    def jp_server_config(self):
        return server_config(NoAccessAuthorizer)

    async def test_every_endpoint_and_the_stream_refuse(self, jp_fetch, jp_ws_fetch, jp_root_dir, notebook):
        finished_run(jp_root_dir / "study" / "runs" / "r1")
        for endpoint, method in ENDPOINTS:
            code, _ = await status_of(jp_fetch, endpoint, method, params={"path": notebook},
                                      body=json.dumps({"path": notebook}))
            assert code == 403, (endpoint, method)
        with pytest.raises(HTTPClientError) as info:
            await jp_ws_fetch("caia", "api", "run", "stream", params={"path": "study/runs/r1"})
        assert info.value.code == 403


# -- bad input: a 4xx with one JSON line, refused before the core ---------------------------------------------

NUL = "study/good\x00.ipynb"
QUERY_CASES = [
    ("no path", {}),
    ("empty path", {"path": ""}),
    ("NUL byte in path", {"path": NUL}),
    ("newline in path", {"path": "study/\n.ipynb"}),
    ("path not UTF-8", {"path": b"study/\xff.ipynb"}),
    ("name too long", {"path": "study/" + "a" * 300}),
    ("symlink loop", {"path": "loop/x.ipynb"}),
    ("absolute path outside the root", {"path": "/etc/passwd"}),
    ("path up and out of the root", {"path": "../outside"}),
]
SINCE_CASES = [("since=abc", "abc"), ("since=-1", "-1"), ("since empty", ""), ("since=1.5", "1.5"),
               ("since=2**63", str(2**63)), ("since with 5000 digits", "9" * 5000)]
BODY_CASES = [
    ("empty body", ""),
    ("body not JSON", "path=study/good.ipynb"),
    ("body half JSON", "{"),
    ("body not UTF-8", b"\xff\xfe{}"),
    ("body a list", "[]"),
    ("body a list of the path", '["study/good.ipynb"]'),
    ("body a string", '"study/good.ipynb"'),
    ("body a number", "1"),
    ("body null", "null"),
    ("body true", "true"),
    ("no path", "{}"),
    ("path a number", '{"path": 1}'),
    ("path a float", '{"path": 1.5}'),
    ("path a list", '{"path": ["study/good.ipynb"]}'),
    ("path an object", '{"path": {"a": 1}}'),
    ("path null", '{"path": null}'),
    ("path true", '{"path": true}'),
    ("path empty", '{"path": ""}'),
    ("NUL byte in path", json.dumps({"path": NUL})),
    ("path outside the root", '{"path": "/etc/passwd"}'),
    ("unknown key", '{"path": "study/good.ipynb", "pth": "x"}'),
]
SUBMIT_CASES = [
    ("target a number", {"target": 1}),
    ("target null", {"target": None}),
    ("target a list", {"target": ["simulator"]}),
    ("target unknown", {"target": "mars"}),
    ("target prod", {"target": "prod"}),
    ("sites a string", {"target": "poc", "sites": "site-1"}),
    ("sites an object", {"target": "poc", "sites": {"site-1": True}}),
    ("sites of numbers", {"target": "poc", "sites": [1]}),
    ("sites of null", {"target": "poc", "sites": [None]}),
    ("NUL byte in a site", {"target": "poc", "sites": ["site\x00"]}),
    ("sites for the simulator", {"target": "simulator", "sites": ["site-1"]}),
]
FUZZ = (
    [pytest.param(method, endpoint, params, None, id=f"{method} {endpoint} {name}")
     for endpoint, method in [("notebook", "GET"), ("runs", "GET"), ("run", "GET"), ("run", "DELETE"), ("explore", "GET")]
     for name, params in QUERY_CASES]
    + [pytest.param("GET", "run", {"path": "study", "since": since}, None, id=f"GET run {name}")
       for name, since in SINCE_CASES]
    + [pytest.param("POST", endpoint, {}, body, id=f"POST {endpoint} {name}")
       for endpoint in ("validate", "review", "runs") for name, body in BODY_CASES]
    + [pytest.param("POST", "runs", {}, json.dumps({"path": "study/good.ipynb", **fields}), id=f"POST runs {name}")
       for name, fields in SUBMIT_CASES]
    + [pytest.param(method, endpoint, {"path": "study/good.ipynb"}, "{}", id=f"{method} {endpoint}, a method it lacks")
       for endpoint, method in [("version", "POST"), ("notebook", "DELETE"), ("runs", "PUT"), ("run", "PUT")]]
)


@pytest.fixture
def core_unreachable(monkeypatch):
    """Replace the core's entry points by a fake that fails loudly: bad input must never get that far."""

    def fake_core(*args, **kwargs):
        raise RuntimeError("secret-internal-marker: the core was reached")

    from caia_jupyter import overview
    from caia_jupyter.researcher import runs, validation
    from caia_jupyter.targets import submit
    for module, name in [(overview, "notebook"), (overview, "run"), (overview, "runs"), (overview, "exploration"), (compose, "build"), (submit, "submit"),
                         (validation, "validate"), (runs, "Run")]:
        monkeypatch.setattr(module, name, fake_core)


@pytest.fixture
def fuzz_root(jp_root_dir, notebook):
    (jp_root_dir / "loop").symlink_to(jp_root_dir / "loop")
    return jp_root_dir


@pytest.mark.parametrize("method, endpoint, params, body", FUZZ)
async def test_bad_input_is_a_4xx_with_one_json_line(jp_fetch, fuzz_root, core_unreachable, method, endpoint,
                                                     params, body):
    code, reply = await status_of(jp_fetch, endpoint, method, params=params, body=body)
    assert 400 <= code < 500, reply
    assert set(reply) == {"message", "error"} and reply["message"] and "\n" not in reply["message"]
    assert "\x00" not in reply["message"] and "secret" not in reply["message"]


@pytest.mark.parametrize("name, params", QUERY_CASES, ids=[f"stream {name}" for name, _ in QUERY_CASES])
async def test_the_run_stream_refuses_bad_input_before_upgrading(jp_ws_fetch, fuzz_root, core_unreachable,
                                                                 name, params):
    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("caia", "api", "run", "stream", params=params)
    assert 400 <= info.value.code < 500


async def test_what_is_wrong_is_named(jp_fetch, notebook):
    cases = [
        ("GET", "run", {"path": "study", "since": "abc"}, None, "'since' in the query: Input should be a valid integer"),
        ("GET", "run", {"path": "study", "since": "-1"}, None, "'since' in the query: Input should be greater than"),
        ("GET", "notebook", {"path": NUL}, None, "'path' in the query: holds a control character (at position 10)"),
        ("POST", "validate", {}, "[]", "the request body: Input should be an object; expected {\"path\""),
        ("POST", "review", {}, "", "the request body: Invalid JSON"),
        ("POST", "runs", {}, '{"path": 1}', "'path' in the request body: Input should be a valid string"),
        ("POST", "runs", {}, json.dumps({"path": notebook, "target": "mars"}), "'target' in the request body: "
                                                                                  "Input should be 'simulator' or 'poc'"),
        ("POST", "runs", {}, json.dumps({"path": notebook, "sites": ["a"]}), "leave 'sites' out"),
    ]
    for method, endpoint, params, body, fragment in cases:
        code, reply = await status_of(jp_fetch, endpoint, method, params=params, body=body)
        assert (code, reply["error"]) == (400, "BadInput") and fragment in reply["message"], reply


async def test_a_bug_in_the_core_is_a_500_without_internals(jp_fetch, notebook, core_unreachable):
    code, reply = await status_of(jp_fetch, "notebook", "GET", params={"path": notebook})
    assert code == 500
    assert reply == {"message": "caia failed unexpectedly; the Jupyter server's log has the details",
                     "error": "InternalError"}


async def test_a_permission_problem_is_a_403(jp_fetch, notebook, monkeypatch):
    from caia_jupyter import overview

    def fake_overview(*args):
        raise PermissionError(13, "Permission denied", "/root/private/study.ipynb")

    monkeypatch.setattr(overview, "notebook", fake_overview)
    code, reply = await status_of(jp_fetch, "notebook", "GET", params={"path": notebook})
    assert (code, reply) == (403, {"message": "permission denied on /root/private/study.ipynb",
                                   "error": "PermissionError"})


# -- outputs never go through a symlink out of the root ---------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["validate", "review", "runs"])
@pytest.mark.parametrize("folder", ["bundles", "bundles/good", "bundles/good/records", "runs"])
async def test_output_folders_that_lead_out_of_the_root_are_refused(jp_fetch, jp_root_dir, tmp_path, notebook,
                                                                     endpoint, folder):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = jp_root_dir / "study" / folder
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    code, reply = await status_of(jp_fetch, endpoint, "POST", body=json.dumps({"path": notebook}))
    assert code == 403 and reply["error"] == "OutsideRoot"
    assert reply["message"].startswith(f"study/{folder} leads outside the server's root directory")
    assert list(outside.iterdir()) == []


async def test_a_notebook_linked_from_outside_the_root_is_refused(jp_fetch, jp_root_dir, tmp_path):
    (jp_root_dir / "linked.ipynb").symlink_to(corpus.write("good", tmp_path / "outside"))
    code, reply = await status_of(jp_fetch, "review", "POST", body=json.dumps({"path": "linked.ipynb"}))
    assert code == 403 and "linked.ipynb is outside the server's root directory" in reply["message"]
    assert not (tmp_path / "outside" / "bundles").exists()


async def test_output_folders_linked_inside_the_root_are_used(jp_fetch, jp_root_dir, notebook):
    (jp_root_dir / "elsewhere").mkdir()
    (jp_root_dir / "study" / "bundles").symlink_to(jp_root_dir / "elsewhere")
    review = await post(jp_fetch, "review", {"path": notebook})
    assert review["review"] == "elsewhere/good/records/review.html"
    assert (jp_root_dir / review["review"]).is_file()


# -- files under the root that the core reads: a malformed one is a 4xx or left out, never a 500 ----------


def edit_notebook(path, edit):
    nb = nbformat.read(path, as_version=4)
    edit(nb)
    nbformat.write(nb, path)


async def test_a_federated_cell_python_cannot_compile_is_a_400_naming_the_cell(jp_fetch, jp_root_dir, notebook):
    edit_notebook(jp_root_dir / notebook, lambda nb: nb.cells.append(nbformat.v4.new_code_cell("%%federated\nnonlocal x\n")))
    code, body = await status_of(jp_fetch, "notebook", "GET", {"path": notebook})
    assert code == 400 and body["error"] == "NotebookError"
    assert body["message"].startswith("federated cell 6 (notebook cell 11) line 2: SyntaxError:") and "nonlocal declaration not allowed at module level" in body["message"]


async def test_a_malformed_catalog_entry_at_an_approving_site_is_that_sites_rejection(jp_fetch, jp_root_dir, notebook):
    site = make_site((jp_root_dir / notebook).parent / "sites", "site-1")
    approve(site, compose.compose(jp_root_dir / notebook).id, {"tiny": "tiny"})
    (site.path / "catalog.json").write_text(json.dumps({"datasets": {"tiny": ["data.csv"]}}))
    state = await get(jp_fetch, "notebook", path=notebook)
    assert [(s["name"], s["approval"]) for s in state["sites"]] == [("site-1", "rejected")]
    assert "catalog is unreadable" in state["sites"][0]["detail"] and str(site.path) not in state["sites"][0]["detail"]


@pytest.mark.parametrize("record", ["[1]", '"passed"', json.dumps({"bundle_id": "sha256:x", "passed": False, "error": ["x"]})])
async def test_a_validation_record_that_is_no_object_reads_as_not_validated(jp_fetch, jp_root_dir, notebook, record):
    built = compose.build(jp_root_dir / notebook)
    (built.records / "validation.json").write_text(record)
    (built.records / "build.json").write_text("[1]")
    state = await get(jp_fetch, "notebook", path=notebook)
    assert state["validation"] == {"state": "none", "summary": "not validated for this bundle id", "cell": None, "line": None}
    code, body = await status_of(jp_fetch, "runs", "POST", body=json.dumps({"path": notebook}))
    assert code == 409 and "is not validated" in body["message"]


async def test_a_failed_validation_record_with_a_malformed_error_is_shown_as_failed(jp_fetch, jp_root_dir, notebook):
    built = compose.build(jp_root_dir / notebook)
    (built.records / "validation.json").write_text(json.dumps({"bundle_id": built.id, "passed": False, "error": ["x"]}))
    state = await get(jp_fetch, "notebook", path=notebook)
    assert state["validation"] == {"state": "failed", "summary": "failed", "cell": None, "line": None}
    code, body = await status_of(jp_fetch, "runs", "POST", body=json.dumps({"path": notebook}))
    assert code == 409 and "failed validation" in body["message"]


async def test_abort_signals_no_process_that_is_not_caias_launcher_of_that_run(jp_fetch, jp_root_dir, notebook):
    """A run folder from elsewhere (a shared drive, a repository) names any process in launcher.pid."""
    victim = subprocess.Popen(["sleep", "120"], start_new_session=True)  # stands for any process of the user
    try:
        run = jp_root_dir / "runs" / "copied"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps(RUN_SPEC))
        (run / "launcher.pid").write_text(str(victim.pid))
        code, body = await status_of(jp_fetch, "run", "DELETE", {"path": "runs/copied"})
        assert code == 400 and body["message"] == "no caia process runs for copied, so there is nothing to abort"
        assert victim.poll() is None and not (run / "outcome.json").exists()
        (run / "launcher.pid").write_text(str(os.getpid()))  # a Python process, but no launcher of this run
        assert (await status_of(jp_fetch, "run", "DELETE", {"path": "runs/copied"}))[0] == 400
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.slow
async def test_aborting_a_live_run_stops_every_process_and_the_list_shows_it_aborted(jp_fetch, jp_root_dir):
    import psutil


    path = write_corpus("good", jp_root_dir / "long", lambda nb: set_source(nb, "rounds=2", "rounds=40"))
    notebook = path.relative_to(jp_root_dir).as_posix()
    assert (await post(jp_fetch, "validate", {"path": notebook}))["passed"] is True
    bundle_id = (await get(jp_fetch, "notebook", path=notebook))["bundle_id"]
    for name in ("site-1", "site-2"):
        approve(make_site(path.parent / "sites", name), bundle_id, {"tiny": "tiny"})
    started = await post(jp_fetch, "runs", {"path": notebook, "target": "simulator"})
    for _ in range(240):  # until the sites train: every NVFLARE process is up
        state = await get(jp_fetch, "run", path=started["run"])
        if state["status"] == "running" and state["records"]:
            break
        await asyncio.sleep(0.5)
    assert state["status"] == "running", state
    launcher = int((jp_root_dir / started["run"] / "launcher.pid").read_text())
    processes = [p for p in psutil.process_iter() if _session(p) == launcher]
    assert len(processes) > 2  # the launcher, NVFLARE's server and its sites
    response = await jp_fetch("caia", "api", "run", method="DELETE", params={"path": started["run"]})
    assert json.loads(response.body)["status"] == "aborted"
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]
    listed = (await get(jp_fetch, "runs", path=notebook))["runs"]
    assert [(r["run"], r["status"]) for r in listed] == [(started["run"], "aborted")]
    assert listed[0]["headline"].startswith("aborted") and listed[0]["duration_s"] is not None


def _session(process) -> int | None:
    try:
        return os.getsid(process.pid)
    except OSError:
        return None


def kept_build_with_odd_cells(root):
    """A notebook whose first build site-1 approved, edited since; that build's kept record has a
    cell whose ordinal is an object (the record is a file: anything can be written there)."""
    path = corpus.write("good", root / "study")
    site = make_site(path.parent / "sites", "site-1")
    approved = compose.build(path)
    approve(site, approved.id, {"tiny": "tiny"})
    nb = nbformat.read(path, as_version=4)
    set_source(nb, "param.lr=0.1", "param.lr=0.2")
    nbformat.write(nb, path)
    kept = history.entry(approved.path, approved.id) / history.BUILD
    kept.write_text(json.dumps({**json.loads(kept.read_text()), "cells": [{"ordinal": {"a": 1}}]}))
    return path


async def test_the_notebook_view_with_a_kept_build_of_odd_cells_still_shows_the_older_approval(jp_fetch, jp_root_dir):
    kept_build_with_odd_cells(jp_root_dir)
    state = await get(jp_fetch, "notebook", path="study/good.ipynb")
    assert state["sites"][0]["approval"] == "older"


async def test_the_notebook_view_with_a_malformed_earlier_build_record_reads_the_sample_again(jp_fetch, jp_root_dir):
    path = corpus.write("good", jp_root_dir / "study")
    built = compose.build(path)
    record_path = built.path / "records" / "build.json"
    record = json.loads(record_path.read_text())
    record["manifest"]["datasets"]["tiny"]["columns"] = [{"name": "x1", "kind": "string"}]
    record_path.write_text(json.dumps(record))
    state = await get(jp_fetch, "notebook", path="study/good.ipynb")
    assert state["bundle_id"] == built.id

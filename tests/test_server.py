"""The server extension behind the panel, in-process (pytest-jupyter's jp_fetch)."""

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError

import corpus
from caia_jupyter import approvals, bundle
from conftest import make_site


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"caia_jupyter": True}}}


@pytest.fixture
def notebook(jp_root_dir):
    path = corpus.write("good", jp_root_dir / "study")
    return path.relative_to(jp_root_dir).as_posix()


async def get(jp_fetch, endpoint, **params):
    response = await jp_fetch("caia", "api", endpoint, params=params)
    return json.loads(response.body)


async def post(jp_fetch, endpoint, body):
    response = await jp_fetch("caia", "api", endpoint, method="POST", body=json.dumps(body))
    return json.loads(response.body)


async def test_every_endpoint_requires_authentication(jp_fetch):
    for endpoint, method in [("version", "GET"), ("notebook", "GET"), ("validate", "POST"), ("review", "POST"),
                             ("runs", "POST"), ("run", "GET"), ("run", "DELETE")]:
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("caia", "api", endpoint, method=method, headers={"Authorization": ""},
                           **({"body": "{}"} if method == "POST" else {}))
        assert info.value.code == 403, endpoint


async def test_the_panel_sees_the_same_bundle_id_as_the_cli(jp_fetch, jp_root_dir, notebook):
    state = await get(jp_fetch, "notebook", path=notebook)
    assert state["bundle_id"] == bundle.build(jp_root_dir / notebook).id
    assert [c["first_line"] for c in state["cells"]][:2] == ["import torch", "def build_model():"]
    assert state["validation"] == {"state": "none", "summary": "not validated for this bundle id"}
    assert state["job"] == {"rounds": 2, "min_clients": 1, "params": {"lr": 0.1}}


async def test_approvals_per_site_beside_the_notebook(jp_fetch, jp_root_dir, notebook):
    study = (jp_root_dir / notebook).parent
    first = make_site(study / "sites", "site-1")
    make_site(study / "sites", "site-2")
    state = await get(jp_fetch, "notebook", path=notebook)
    approvals.approve(first, state["bundle_id"], {"tiny": "tiny"})
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


async def test_paths_outside_the_root_and_missing_files(jp_fetch, notebook):
    with pytest.raises(HTTPClientError) as info:
        await get(jp_fetch, "notebook", path="../../etc/passwd")
    assert info.value.code == 403
    with pytest.raises(HTTPClientError) as info:
        await get(jp_fetch, "notebook", path="study/missing.ipynb")
    assert info.value.code == 400 and "does not exist" in json.loads(info.value.response.body)["message"]
    with pytest.raises(HTTPClientError) as info:
        await post(jp_fetch, "runs", {"path": notebook})
    assert info.value.code == 409 and "build and validate it" in json.loads(info.value.response.body)["message"]


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


@pytest.mark.slow
async def test_validate_submit_and_stream_a_run(jp_fetch, jp_ws_fetch, jp_root_dir, notebook):
    study = (jp_root_dir / notebook).parent
    result = await post(jp_fetch, "validate", {"path": notebook})
    assert result["passed"] is True
    state = await get(jp_fetch, "notebook", path=notebook)
    assert state["validation"]["state"] == "passed"
    for name in ("site-1", "site-2"):
        approvals.approve(make_site(study / "sites", name), state["bundle_id"], {"tiny": "tiny"})
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

"""The Review view's REST API, in-process (pytest-jupyter's jp_fetch): a reviewer's server, configured
with its key and site, shows a packed bundle or a bundle folder and signs approvals for that site."""

import json
import shutil

import pytest
from tornado.httpclient import HTTPClientError

from caia_jupyter.researcher import transport
from caia_jupyter.site import audit
from caia_jupyter.site.approvals import find_approval
from caia_jupyter.site.keys import key_id, load_private_key
from conftest import build_validated, make_site, reviewer_key, set_source


@pytest.fixture
def site(tmp_path):
    """A site outside the server's root, its reviewer key outside both (tmp_path/reviewers)."""
    return make_site(tmp_path / "sites", "site-1")


@pytest.fixture
def jp_server_config(site):
    return {"ServerApp": {"jpserver_extensions": {"caia_jupyter": True}},
            "CaiaExtension": {"reviewer_key": str(reviewer_key(site)), "review_site": str(site.path)}}


@pytest.fixture
def packed(jp_root_dir, validated_good):
    """The validated good bundle packed into the server's root: its path relative to the root."""
    transport.pack(validated_good.path, jp_root_dir / "inbox" / "good.zip")
    return "inbox/good.zip"


@pytest.fixture
def folder(jp_root_dir, validated_good):
    shutil.copytree(validated_good.path, jp_root_dir / "bundles" / "good")
    return "bundles/good"


async def call(jp_fetch, endpoint, method="GET", params=None, body=None):
    """(status, JSON reply) of /caia/api/<endpoint>, an error status included."""
    try:
        response = await jp_fetch("caia", "api", *endpoint.split("/"), method=method, params=params or {},
                                  request_timeout=600, **({"body": body if isinstance(body, str) else json.dumps(body)}
                                                          if method == "POST" else {}))
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body)
    return response.code, json.loads(response.body)


def files_under(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


@pytest.mark.parametrize("which", ["packed", "folder"])
async def test_a_packed_bundle_or_a_folder_is_reviewed_for_the_configured_site(jp_fetch, jp_root_dir, site, validated_good,
                                                                                which, request):
    path = request.getfixturevalue(which)
    before = files_under(jp_root_dir)
    code, view = await call(jp_fetch, "bundle", params={"path": path})
    assert code == 200, view
    assert (view["bundle_id"], view["short_id"]) == (validated_good.id, validated_good.short_id)
    assert view["review_html"].startswith("<!DOCTYPE html>") and validated_good.id in view["review_html"]
    assert "site-1 requires no differential privacy" in view["review_html"]  # rendered for the site
    assert (view["site"], view["requested"], view["catalog"]) == ("site-1", ["tiny"], ["tiny"])
    assert view["key_id"] == key_id(load_private_key(reviewer_key(site)).public_key())
    assert (view["can_sign"], view["reason"], view["path"]) == (True, "", path)
    assert str(reviewer_key(site)) not in json.dumps(view) and "reviewers" not in json.dumps(view)
    assert files_under(jp_root_dir) == before  # nothing extracted or rendered beside the bundle
    try:
        from caia_jupyter.reviewer import capabilities
    except ImportError:
        assert view["capabilities"] is None
    else:
        assert view["capabilities"] == capabilities.report(validated_good).to_json()
    assert view["changes"] is None  # the site approved nothing before


async def test_approve_writes_an_approval_the_site_admits(jp_fetch, site, validated_good, packed):
    code, approval = await call(jp_fetch, "bundle/approve", "POST",
                                body={"path": packed, "bundle_id": validated_good.id, "datasets": {"tiny": "tiny"},
                                      "expires_in_days": 2})
    assert code == 200, approval
    assert (approval["site"], approval["bundle_id"], approval["datasets"]) == ("site-1", validated_good.id, {"tiny": "tiny"})
    found, reasons = find_approval(site, validated_good.id, {"tiny"})
    assert found is not None, reasons
    assert found.datasets == {"tiny": "tiny"} and found.key_id == approval["key_id"]


async def test_after_an_approval_the_next_version_shows_what_changed(jp_fetch, jp_root_dir, tmp_path, site,
                                                                       validated_good, packed):
    code, _ = await call(jp_fetch, "bundle/approve", "POST",
                         body={"path": packed, "bundle_id": validated_good.id, "datasets": {"tiny": "tiny"}})
    assert code == 200
    edited = build_validated(tmp_path / "next", edit=lambda nb: set_source(nb, "torch.manual_seed(0)", "torch.manual_seed(1)"))
    transport.pack(edited.path, jp_root_dir / "inbox" / "next.zip")
    code, view = await call(jp_fetch, "bundle", params={"path": "inbox/next.zip"})
    assert code == 200 and view["changes"]["base"]["bundle_id"] == validated_good.id
    changed = [cell for cell in view["changes"]["cells"] if cell["status"] != "unchanged"]
    assert len(changed) == 1 and "+    torch.manual_seed(1)" in changed[0]["diff"]


async def test_approve_refuses_a_bundle_that_changed_since_it_was_read(jp_fetch, site, validated_good, packed):
    stale = "sha256:" + "0" * 64
    code, reply = await call(jp_fetch, "bundle/approve", "POST",
                             body={"path": packed, "bundle_id": stale, "datasets": {"tiny": "tiny"}})
    assert code == 409 and reply["error"] == "BundleError"
    assert f"now bundle {validated_good.short_id}, not the {'0' * 12} you reviewed" in reply["message"]
    assert "\n" not in reply["message"]
    assert not list(site.approvals_dir.glob("*.json"))


async def test_approve_refuses_what_the_site_would_not_admit(jp_fetch, site, validated_good, packed):
    code, reply = await call(jp_fetch, "bundle/approve", "POST",
                             body={"path": packed, "bundle_id": validated_good.id, "datasets": {"tiny": "missing"}})
    assert 400 <= code < 500 and "nothing was signed" in reply["message"], reply
    assert not list(site.approvals_dir.glob("*.json"))


@pytest.mark.parametrize("method, endpoint", [("GET", "bundle"), ("POST", "bundle/approve"), ("POST", "bundle/reject")])
async def test_paths_outside_the_root_are_refused(jp_fetch, site, method, endpoint):
    body = {"path": "../outside.zip", "bundle_id": "sha256:" + "1" * 64}
    body.update({"datasets": {}} if endpoint.endswith("approve") else {"reason": "no"} if endpoint.endswith("reject") else {})
    code, reply = await call(jp_fetch, endpoint, method, params={"path": "../outside.zip"}, body=body)
    assert code == 403 and "outside the server's root" in reply["message"]


JUNK_QUERIES = [{}, {"path": ""}, {"path": "nothing/here.zip"}, {"path": "study/notes.txt"}, {"path": "study"},
                {"path": "study/fake.zip"}, {"path": "study/bomb.zip"}, {"path": "study/linked.zip"}]
JUNK_BODIES = ["", "[]", "{}", '{"path": 1}', '{"path": "inbox/good.zip"}',
               '{"path": "inbox/good.zip", "bundle_id": "sha256:xyz", "datasets": {}}',
               '{"path": "inbox/good.zip", "bundle_id": "sha256:' + "0" * 64 + '", "datasets": []}',
               '{"path": "inbox/good.zip", "bundle_id": "sha256:' + "0" * 64 + '", "datasets": {"a": 1}}',
               '{"path": "inbox/good.zip", "bundle_id": "sha256:' + "0" * 64 + '", "datasets": {}, "expires_in_days": -1}',
               '{"path": "inbox/good.zip", "bundle_id": "sha256:' + "0" * 64 + '", "datasets": {}, "expires_in_days": "NaN"}',
               '{"path": "inbox/good.zip", "bundle_id": "sha256:' + "0" * 64 + '", "datasets": {}, "extra": 1}',
               '{"path": "study/fake.zip", "bundle_id": "sha256:' + "0" * 64 + '", "datasets": {}}',
               '{"path": "inbox/good.zip", "bundle_id": "sha256:' + "0" * 64 + '", "reason": ""}',
               '{"path": "inbox/good.zip", "bundle_id": "sha256:' + "0" * 64 + '", "reason": "a\\nb"}']


@pytest.fixture
def junk(jp_root_dir, packed, tmp_path):
    import zipfile

    study = jp_root_dir / "study"
    study.mkdir()
    (study / "notes.txt").write_text("hello")
    (study / "fake.zip").write_bytes(b"PK\x03\x04 not a zip")
    with zipfile.ZipFile(study / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("b/federated.py", b"\0" * (32 << 20))
    with zipfile.ZipFile(study / "linked.zip", "w") as linked:
        info = zipfile.ZipInfo("b/manifest.json")
        info.external_attr = (0o120777 << 16)
        linked.writestr(info, "/etc/passwd")
    return jp_root_dir


@pytest.mark.parametrize("params", JUNK_QUERIES, ids=repr)
async def test_junk_queries_are_a_4xx_with_one_line(jp_fetch, junk, params):
    before = files_under(junk)
    code, reply = await call(jp_fetch, "bundle", params=params)
    assert 400 <= code < 500, reply
    assert set(reply) == {"message", "error"} and reply["message"] and "\n" not in reply["message"]
    assert files_under(junk) == before


@pytest.mark.parametrize("endpoint", ["bundle/approve", "bundle/reject"])
@pytest.mark.parametrize("body", JUNK_BODIES, ids=repr)
async def test_junk_bodies_are_a_4xx_with_one_line(jp_fetch, junk, site, endpoint, body):
    code, reply = await call(jp_fetch, endpoint, "POST", body=body)
    assert 400 <= code < 500, reply
    assert set(reply) == {"message", "error"} and reply["message"] and "\n" not in reply["message"]
    assert not list(site.approvals_dir.glob("*.json"))


class TestNoReviewerConfigured:
    @pytest.fixture
    def jp_server_config(self):
        return {"ServerApp": {"jpserver_extensions": {"caia_jupyter": True}}}

    async def test_the_review_shows_and_says_how_to_sign(self, jp_fetch, validated_good, packed):
        code, view = await call(jp_fetch, "bundle", params={"path": packed})
        assert code == 200 and view["bundle_id"] == validated_good.id and view["review_html"]
        assert (view["can_sign"], view["site"], view["key_id"], view["catalog"], view["changes"]) == (False, None, None, [], None)
        assert "--CaiaExtension.reviewer_key=" in view["reason"] and "--CaiaExtension.review_site=" in view["reason"]
        assert "\n" not in view["reason"]

    async def test_approving_is_refused_in_one_line(self, jp_fetch, validated_good, packed):
        code, reply = await call(jp_fetch, "bundle/approve", "POST",
                                 body={"path": packed, "bundle_id": validated_good.id, "datasets": {"tiny": "tiny"}})
        assert code == 400 and reply["message"].startswith("cannot sign: this server signs for no site")


class TestAKeyTheSiteDoesNotTrust:
    @pytest.fixture
    def jp_server_config(self, site, tmp_path):
        other = make_site(tmp_path / "elsewhere", "site-9")
        return {"ServerApp": {"jpserver_extensions": {"caia_jupyter": True}},
                "CaiaExtension": {"reviewer_key": str(reviewer_key(other)), "review_site": str(site.path)}}

    async def test_cannot_sign_and_the_key_path_stays_on_the_server(self, jp_fetch, tmp_path, packed):
        code, view = await call(jp_fetch, "bundle", params={"path": packed})
        assert code == 200 and view["can_sign"] is False and "does not trust reviewer key" in view["reason"]
        assert str(tmp_path) not in json.dumps({k: v for k, v in view.items() if k != "review_html"})


class TestAKeyInsideTheRoot:
    @pytest.fixture
    def jp_server_config(self, site, jp_root_dir):
        inside = jp_root_dir / "keys" / "me.key"
        inside.parent.mkdir(parents=True)
        shutil.copyfile(reviewer_key(site), inside)
        return {"ServerApp": {"jpserver_extensions": {"caia_jupyter": True}},
                "CaiaExtension": {"reviewer_key": str(inside), "review_site": str(site.path)}}

    async def test_is_refused_for_signing(self, jp_fetch, packed):
        code, view = await call(jp_fetch, "bundle", params={"path": packed})
        assert code == 200 and view["can_sign"] is False and "inside the server's root" in view["reason"]


async def test_reject_signs_a_rejection_and_records_it_in_the_audit_log(jp_fetch, site, validated_good, packed):
    code, reply = await call(jp_fetch, "bundle/reject", "POST",
                             body={"path": packed, "bundle_id": validated_good.id, "reason": "reads the network"})
    assert code == 200 and reply["bundle_id"] == validated_good.id and reply["reason"] == "reads the network"
    assert len(list(site.rejections_dir.glob("*.json"))) == 1
    records, problems = audit.verify(site)
    assert problems == [] and [(r["event"], r["bundle_id"], r["reason"]) for r in records] == [
        ("rejection", validated_good.id, "reads the network")]


async def test_every_bundle_endpoint_requires_authentication(jp_fetch):
    for endpoint, method in [("bundle", "GET"), ("bundle/approve", "POST"), ("bundle/reject", "POST")]:
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("caia", "api", *endpoint.split("/"), method=method, headers={"Authorization": ""},
                           **({"body": "{}"} if method == "POST" else {}))
        assert info.value.code == 403, endpoint


class TestAuthorizerIsAsked:
    @pytest.fixture
    def jp_server_config(self, site):
        from test_server import RecordingAuthorizer

        return {"ServerApp": {"jpserver_extensions": {"caia_jupyter": True}, "authorizer_class": RecordingAuthorizer}}

    @pytest.mark.parametrize("endpoint, method, needs", [
        ("bundle", "GET", [("read", "contents")]),
        ("bundle/approve", "POST", [("write", "contents")]),
        ("bundle/reject", "POST", [("write", "contents")]),
    ])
    async def test_reading_reads_and_signing_writes(self, jp_fetch, jp_serverapp, endpoint, method, needs):
        await call(jp_fetch, endpoint, method, body="{}")  # refused as bad input, after authorization
        assert jp_serverapp.authorizer.asked == needs


class TestReadOnlyUser:
    @pytest.fixture
    def jp_server_config(self, site):
        from test_server import ReadOnlyAuthorizer

        return {"ServerApp": {"jpserver_extensions": {"caia_jupyter": True}, "authorizer_class": ReadOnlyAuthorizer},
                "CaiaExtension": {"reviewer_key": str(reviewer_key(site)), "review_site": str(site.path)}}

    async def test_reads_the_review_but_cannot_sign(self, jp_fetch, site, validated_good, packed):
        assert (await call(jp_fetch, "bundle", params={"path": packed}))[0] == 200
        code, reply = await call(jp_fetch, "bundle/approve", "POST",
                                 body={"path": packed, "bundle_id": validated_good.id, "datasets": {"tiny": "tiny"}})
        assert code == 403 and reply["error"] == "Forbidden"
        assert not list(site.approvals_dir.glob("*.json"))


async def test_the_view_says_where_the_bundle_stands_at_the_site(jp_fetch, site, validated_good, packed):
    code, view = await call(jp_fetch, "bundle", params={"path": packed})
    assert code == 200 and view["standing"]["state"] == "never reviewed"
    assert view["standing"]["line"] == "standing at site-1: never reviewed: no approval, revocation or rejection of this bundle"
    code, approval = await call(jp_fetch, "bundle/approve", "POST",
                                body={"path": packed, "bundle_id": validated_good.id, "datasets": {"tiny": "tiny"}})
    assert code == 200
    code, view = await call(jp_fetch, "bundle", params={"path": packed})
    assert (view["standing"]["state"], view["standing"]["approval"]["expires_at"]) == ("approved", approval["expires_at"])
    assert view["standing"]["line"] == f"standing at site-1: approved by key {approval['key_id']} until {approval['expires_at']}"


async def test_an_unvalidated_bundle_cannot_be_signed_and_the_view_says_what_to_ask_for(jp_fetch, jp_root_dir, site,
                                                                                           validated_good):
    folder = shutil.copytree(validated_good.path, jp_root_dir / "bundles" / "unchecked")
    (folder / "records" / "validation.json").unlink()
    code, view = await call(jp_fetch, "bundle", params={"path": "bundles/unchecked"})
    assert code == 200 and view["can_sign"] is False
    assert view["reason"] == (f"bundle {validated_good.short_id} is not validated: ask the researcher for the bundle that "
                              "passed validation (with its records/validation.json)")


async def test_the_bundle_errors_name_the_path_as_given_and_the_expiry_as_a_number_of_days(jp_fetch, jp_root_dir, site,
                                                                                              validated_good, packed, folder):
    code, reply = await call(jp_fetch, "bundle", params={"path": "inbox/nope.zip"})
    assert 400 <= code < 500, reply
    assert reply["message"].startswith("inbox/nope.zip does not exist; ")
    code, reply = await call(jp_fetch, "bundle", params={"path": "bundles/good/federated.py"})
    assert 400 <= code < 500 and reply["message"].startswith("bundles/good/federated.py is neither a bundle folder")
    code, reply = await call(jp_fetch, "bundle/approve", "POST",
                             body={"path": packed, "bundle_id": validated_good.id, "datasets": {"tiny": "tiny"},
                                   "expires_in_days": 365})
    assert 400 <= code < 500 and "--expires-in" not in reply["message"]
    assert reply["message"] == ("an expiry of 365 days must be a finite number of days above 0 and at most 90 "
                                "(site-1's policy)")


def test_the_server_logs_at_start_which_site_and_key_it_signs_for(jp_serverapp, site):
    import logging

    extension = next(app for app in jp_serverapp.extension_manager.extension_apps["caia_jupyter"])
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    extension.log.addHandler(handler)
    try:
        extension.initialize_settings()
    finally:
        extension.log.removeHandler(handler)
    kid = key_id(load_private_key(reviewer_key(site)).public_key())
    assert f"caia: the Review view signs for site site-1 with reviewer key {kid}" in seen
    assert not any(str(reviewer_key(site)) in line or "reviewers" in line for line in seen)

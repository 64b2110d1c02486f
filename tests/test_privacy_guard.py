"""The site's privacy checks hold against a bundle or a file that tries to slip past them: delta
against the released rows, numbers shown as compared, ceilings too large for a float, filters that
change nothing, a job naming another privacy scope, and `caia approve`/`caia review --site` telling
what the site's privacy policy makes its guard refuse."""

from __future__ import annotations

import base64
import json

import pytest

from caia_jupyter.contracts.errors import ApprovalRejected, CaiaError, ContractError, SiteError
from caia_jupyter.contracts.privacy import DifferentialPrivacy, exact
from caia_jupyter.researcher import compose
from caia_jupyter.site import approvals, sites
from caia_jupyter.site.guard import Refusal, Unfit, admit, check_app, privacy_ceiling
from caia_jupyter.site.privacy_policy import PRIVACY_FILE, check_job_scope, install, read_policy
from caia_jupyter.site.runtime import Failed, failing
from caia_jupyter.targets.job import build_job
from conftest import approve, make_site, set_source

FILTERS = "nvflare.app_common.filters"
PERCENTILE = {"path": f"{FILTERS}.PercentilePrivacy", "args": {"percentile": 10, "gamma": 0.01}}
TWO_SCOPES = {"default_scope": "strict", "scopes": [
    {"name": "strict", "task_result_filters": [{"path": f"{FILTERS}.ExcludeVars", "args": {"exclude_vars": "fc2"}}]},
    {"name": "open"}]}


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "sites", "site-2")  # dataset tiny: 24 rows


@pytest.fixture
def build(write_notebook, tmp_path):
    """Build the corpus notebook with `privacy` on its %%federated line; not validated."""
    count = iter(range(100))

    def make(privacy: str = ""):
        edit = (lambda nb: set_source(nb, "min_clients=1", f"min_clients=1 {privacy}")) if privacy else None
        return compose.build(write_notebook("good", edit), tmp_path / f"bundle{next(count)}")

    return make


def deploy(built, site, tmp_path):
    return build_job(built, [site.name], tmp_path / f"job-{built.short_id}", name="caia-guard") / f"app_{site.name}"


def set_policy(site, content) -> None:
    (site.path / PRIVACY_FILE).write_text(content if isinstance(content, str) else json.dumps(content))


# -- delta against the rows released ---------------------------------------------------------------


def test_a_ceiling_on_epsilon_is_not_bypassed_by_a_delta_near_1(site, build, tmp_path):
    """(3, 0.9)-DP lets the mechanism publish a record with probability 0.9: no site admits it."""
    built = build("privacy=dp epsilon=3 delta=0.9")
    with pytest.raises(CaiaError) as refused:
        approve(site, built.id, {"tiny": "tiny"}, bundle=built, max_epsilon=3)
    assert str(refused.value) == (
        "site site-2 would refuse this release: it requests delta 0.9, not below one over the rows of the largest dataset "
        "released to it here; ask for privacy=dp delta=... well below that, such as 0.001 (delta 0.9 is not below 1/24); "
        "nothing was signed")  # the reviewer, at the site, sees the count
    assert list(site.approvals_dir.iterdir()) == []
    approve(site, built.id, {"tiny": "tiny"}, max_epsilon=3)  # signed without the bundle: the guard still refuses
    with pytest.raises(Refusal) as refused:
        check_app(deploy(built, site, tmp_path), site, sandbox="off")
    assert str(refused.value).startswith(f"site-2 refused bundle {built.id}: it requests delta 0.9, not below one over ")
    assert "24" not in str(refused.value)  # how many rows a site holds stays at the site


def test_delta_is_checked_against_the_largest_release_and_a_small_one_is_admitted(site, build, tmp_path):
    privacy_ceiling({"privacy": {"epsilon": 3.0, "delta": 1 / 25}}, None, None, rows=24)
    with pytest.raises(Unfit) as refused:
        privacy_ceiling({"privacy": {"epsilon": 3.0, "delta": 1 / 25}}, None, None, rows=25)
    assert refused.value.detail == "delta 0.04 is not below 1/25"
    privacy_ceiling({"privacy": {"epsilon": 3.0, "delta": 0.5}}, None, None, rows=0)  # nothing released: nothing to bound
    built = build("privacy=dp epsilon=3 delta=1e-5")
    approve(site, built.id, {"tiny": "tiny"}, max_epsilon=3)
    release = admit(deploy(built, site, tmp_path), site.path)
    assert release.datasets["tiny"]["rows"] == 24


# -- numbers as compared ---------------------------------------------------------------------------


def test_a_refusal_names_the_numbers_it_compares():
    with pytest.raises(Unfit) as refused:
        privacy_ceiling({"privacy": {"epsilon": 3.0000001, "delta": 1e-5}}, 3, None)
    assert str(refused.value) == ("it requests epsilon 3.0000001, above this site's ceiling of 3 (set in its approval); "
                                  "ask for privacy=dp epsilon<=3")
    assert exact(2.5e-5) == "2.5e-05" and exact(3.0) == "3" and exact(0.1 + 0.2) == "0.30000000000000004"
    assert DifferentialPrivacy(epsilon=3.0000001, delta=1.5e-5).describe() == (
        "DP-SGD, epsilon 3.0000001, delta 1.5e-05, max_grad_norm 1, 1 local epoch per round")


# -- ceilings too large for a float ----------------------------------------------------------------


def _statement(site, bundle_id):
    return {"format": approvals.FORMAT, "site": site.name, "bundle_id": bundle_id, "datasets": {"tiny": "tiny"},
            "key_id": "0" * 16, "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z",
            "max_epsilon": 10**400}


def test_an_approval_with_a_huge_integer_ceiling_is_malformed_not_a_crash(site):
    bundle_id = "sha256:" + "a" * 64
    content = {"statement": _statement(site, bundle_id), "signature": base64.b64encode(b"\0" * 64).decode()}
    with pytest.raises(ApprovalRejected, match="max_epsilon is not a finite number above 0"):
        approvals.verify_approval(content, site, bundle_id)


def test_one_unsigned_file_in_approvals_does_not_stop_the_site_admitting_anything(site):
    bundle_id = "sha256:" + "a" * 64
    content = {"statement": _statement(site, bundle_id), "signature": base64.b64encode(b"\0" * 64).decode()}
    (site.approvals_dir / "junk.json").write_text(json.dumps(content))
    approval, reasons = approvals.find_approval(site, bundle_id, {"tiny"})
    assert approval is None and reasons == [
        "approval junk.json is malformed (max_epsilon is not a finite number above 0); ask the reviewer to sign it again"]


@pytest.mark.parametrize("field", ["max_epsilon", "max_approval_days"])
def test_a_site_policy_with_a_huge_integer_is_a_site_error(site, field):
    meta = json.loads((site.path / "site.json").read_text())
    meta["policy"][field] = 10**400
    (site.path / "site.json").write_text(json.dumps(meta))
    with pytest.raises(SiteError, match=f"policy.{field}"):
        sites.open_site(site.path)
    assert not sites.valid_epsilon(10**400) and not sites.valid_days(10**400) and sites.valid_epsilon(10**300)
    assert sites.shown_days(10**400).startswith("1000")


# -- filters that change nothing -------------------------------------------------------------------


def test_a_percentile_privacy_that_changes_nothing_is_refused(tmp_path):
    (tmp_path / PRIVACY_FILE).write_text(json.dumps({"default_scope": "s", "scopes": [{"name": "s", "task_result_filters": [
        {"path": f"{FILTERS}.PercentilePrivacy", "args": {"percentile": 0, "gamma": 1e9}}]}]}))
    with pytest.raises(SiteError, match="percentile 0 must be a number above 0 and at most 100"):
        read_policy(tmp_path)


# -- the scope a job gets --------------------------------------------------------------------------


def nvflare_site(tmp_path, policy):
    """An NVFLARE site workspace holding `policy` installed as caia installs it; returns NVFLARE's own
    privacy manager of that site, as a client builds it when it starts."""
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    workspace = tmp_path / "workspace"
    (workspace / "local").mkdir(parents=True)
    (workspace / "startup").mkdir()
    install(policy, workspace / "local" / PRIVACY_FILE)
    return workspace, create_privacy_manager(Workspace(str(workspace), "site-1"), names_only=False)


def test_only_the_default_scope_is_installed(tmp_path):
    """NVFLARE applies the scope a job's meta.json names; installed alone, the default is the only one."""
    from nvflare.private.privacy_manager import PrivacyManager, PrivacyService

    (tmp_path / PRIVACY_FILE).write_text(json.dumps(TWO_SCOPES))
    _, manager = nvflare_site(tmp_path, read_policy(tmp_path))
    assert manager.get_scope("open") is None and manager.get_scope("").name == "strict"
    assert [name for name, _ in [(f.__class__.__name__, f) for f in manager.get_scope("strict").task_result_filters["out"]]] == [
        "ExcludeVars"]
    before = PrivacyService.get_manager()
    try:  # the deployment check of a client that loaded the policy at start refuses the other scope
        PrivacyService.initialize(manager)
        assert not PrivacyService.is_scope_allowed("open") and PrivacyService.is_scope_allowed("strict")
    finally:
        PrivacyService.initialize(before if isinstance(before, PrivacyManager) else None)


def job_app(tmp_path, scope: str | None, policy=TWO_SCOPES):
    """A deployed job's app folder laid out as NVFLARE lays it (<workspace>/<job>/app_<site>, meta.json
    beside it), at a site with `policy` installed; its meta.json names `scope` (None: no scope key)."""
    (tmp_path / "site").mkdir(exist_ok=True)
    if policy is not None:
        (tmp_path / "site" / PRIVACY_FILE).write_text(json.dumps(policy))
    workspace, _ = nvflare_site(tmp_path, read_policy(tmp_path / "site"))
    app = workspace / "job-1" / "app_site-1"
    app.mkdir(parents=True)
    (app.parent / "meta.json").write_text(json.dumps({"name": "caia", **({"scope": scope} if scope is not None else {})}))
    return app


@pytest.mark.parametrize("scope", [None, "", "strict"])
def test_a_job_naming_no_scope_or_the_default_runs(tmp_path, scope):
    check_job_scope(job_app(tmp_path, scope))


@pytest.mark.parametrize("scope, policy", [("open", TWO_SCOPES), ("other", TWO_SCOPES), ("open", None)])
def test_a_job_naming_another_scope_is_stopped_before_its_code_runs(tmp_path, scope, policy):
    app = job_app(tmp_path, scope, policy)
    with pytest.raises(Failed) as stopped, failing(None, None):
        check_job_scope(app)
    assert stopped.value.report == {"entry": "runtime", "round": None, "category": "privacy_scope"}
    assert f"names privacy scope {scope!r}" in stopped.value.record["message"]


def test_a_job_without_meta_is_stopped(tmp_path):
    app = job_app(tmp_path, None)
    (app.parent / "meta.json").unlink()
    with pytest.raises(ContractError, match="the job's privacy scope cannot be checked"):
        check_job_scope(app)


# -- approve and review tell what the site's privacy policy refuses --------------------------------


@pytest.mark.parametrize("content, says", [
    ({"scopes": [{"name": "strict", "task_result_filters": [PERCENTILE]}], "default_scope": "strict"},
     "its privacy scope 'strict' applies PercentilePrivacy, which acts on weight differences"),
    ({"scopes": [{"name": "strict", "task_result_filters": [PERCENTILE]}], "default_scope": "strcit"},
     "its privacy policy (privacy.json) is unusable, so it refuses every job"),
], ids=["percentile-needs-weight-diff", "default-scope-typo"])
def test_approve_refuses_what_the_sites_privacy_policy_makes_its_guard_refuse(tmp_path, validated_good, content, says):
    site = make_site(tmp_path / "sites", "site-1")
    set_policy(site, content)
    with pytest.raises(CaiaError) as refused:
        approve(site, validated_good.id, {"tiny": "tiny"}, bundle=validated_good)
    assert str(refused.value).startswith(f"site site-1 would refuse this release: {says}")
    assert str(refused.value).endswith("; nothing was signed") and "\n" not in str(refused.value)
    assert not list((site.path / "approvals").iterdir())


def test_cli_review_with_site_shows_the_scope_and_the_refusal(site, build, caia, tmp_path):
    built = build()
    set_policy(site, {"scopes": [{"name": "strict", "task_result_filters": [PERCENTILE]}], "default_scope": "strict"})
    code, out, _ = caia("review", built.path, "-o", tmp_path / "r.html", "--site", site.path)
    assert code == 0
    lines = out.splitlines()
    assert lines[2].startswith("site-2 requires no differential privacy; an approval signed with --max-epsilon sets "
                               "a ceiling for this bundle; its guard would refuse this bundle: its privacy scope 'strict' "
                               "applies PercentilePrivacy")
    assert lines[3] == "privacy scope applied to every job: strict: PercentilePrivacy(percentile=10, gamma=0.01)"
    code, out, _ = caia("review", built.path, "-o", tmp_path / "r.html", "--site", site.path, "--json")
    data = json.loads(out)["site"]
    assert data["refusal"].startswith("its privacy scope 'strict' applies PercentilePrivacy")
    assert data["privacy"]["default_scope"] == "strict"
    assert data["privacy_scope"] == [lines[3]]
    set_policy(site, "{not json")  # unusable: shown, not a crash
    code, out, _ = caia("review", built.path, "-o", tmp_path / "r.html", "--site", site.path, "--json")
    data = json.loads(out)["site"]
    assert code == 0 and data["privacy"] is None
    assert data["privacy_scope"][0].startswith("privacy scope: none usable, so its guard refuses every job: ")
    assert data["refusal"].startswith("its privacy policy (privacy.json) is unusable, so it refuses every job")
    assert "Your site's guard refuses this bundle: its privacy policy (privacy.json) is unusable" in (
        tmp_path / "r.html").read_text()
    set_policy(site, TWO_SCOPES)
    code, out, _ = caia("review", built.path, "-o", tmp_path / "r.html", "--site", site.path, "--json")
    assert json.loads(out)["site"]["refusal"] is None


@pytest.mark.slow
def test_on_the_simulator_a_job_whose_meta_names_another_scope_is_stopped_at_the_site(tmp_path):
    """The job's meta.json is the submitter's: here it names the site's weaker scope "open"."""
    from caia_jupyter.contracts.failures import REASONS
    from caia_jupyter.researcher.bundle import require_intact
    from caia_jupyter.targets import simulator
    from conftest import build_validated

    built = build_validated(tmp_path / "nb")
    site = make_site(tmp_path / "sites", "site-1")
    set_policy(site, TWO_SCOPES)
    approve(site, built.id, {"tiny": "tiny"})
    run_dir = simulator.create_run(require_intact(built.path), {site.name: site.path}, tmp_path / "runs")
    job = simulator.prepare(run_dir)
    meta = json.loads((job / "meta.json").read_text())
    (job / "meta.json").write_text(json.dumps({**meta, "scope": "open"}))
    run = simulator.start(run_dir)
    assert run.wait(timeout=300) == "failed"
    assert f"site-1 failed in caia's site runtime: {REASONS['privacy_scope']}" in run.message, run.message
    installed = json.loads((run_dir / "workspace" / "site-1" / "local" / PRIVACY_FILE).read_text())
    assert [scope["name"] for scope in installed["scopes"]] == ["strict"]


@pytest.mark.parametrize("privacy", [{"epsilon": "8", "delta": 1e-5}, {"epsilon": 3.0}, ["dp"]])
def test_the_ceiling_check_refuses_a_malformed_request_never_crashes(privacy):
    with pytest.raises(Unfit, match="its differential privacy request is malformed"):
        privacy_ceiling({"privacy": privacy}, 3, None)

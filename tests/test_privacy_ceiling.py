"""A site's ceiling on differential privacy: signed into an approval (`--max-epsilon`) or set in its
policy, enforced by the guard and checked by `caia approve` with the same rule; the review shows the
protection a bundle requests; a DP run's record and exported model state the guarantee."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re

import numpy as np
import pytest
import torch

from caia_jupyter.contracts.errors import ApprovalRejected, CaiaError, SiteError
from caia_jupyter.contracts.manifest import canonical
from caia_jupyter.researcher import compose
from caia_jupyter.researcher.runs import GUARANTEE_FILE, Run
from caia_jupyter.reviewer import review
from caia_jupyter.site import approvals, keys, sites
from caia_jupyter.site.guard import Refusal, admit, check_app
from caia_jupyter.targets.job import build_job
from caia_jupyter.terminal import follow, run_summary
from conftest import approve, build_validated, make_site, reviewer_key, set_source

DP8 = "privacy=dp epsilon=8 delta=1e-5"
DP2 = "privacy=dp epsilon=2 delta=1e-5 max_grad_norm=0.5"


def request(privacy: str):
    """A notebook edit: the corpus notebook's %%federated line also requests `privacy`."""
    return lambda nb: set_source(nb, "min_clients=1", f"min_clients=1 {privacy}")


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "sites", "site-2")


@pytest.fixture
def build(write_notebook, tmp_path):
    """Build the corpus notebook with a privacy request ("" for none); not validated."""
    count = iter(range(100))

    def make(privacy: str = ""):
        return compose.build(write_notebook("good", request(privacy) if privacy else None), tmp_path / f"bundle{next(count)}")

    return make


def deploy(built, site, tmp_path):
    """The bundle's app for `site`, as NVFLARE's FedJob lays it out."""
    job = build_job(built, [site.name], tmp_path / f"job-{built.short_id}", name="caia-privacy")
    return job / f"app_{site.name}"


def signed_file(site, statement: dict, path):
    private = keys.load_private_key(reviewer_key(site))
    path.write_text(json.dumps({"statement": statement, "signature": base64.b64encode(private.sign(canonical(statement))).decode()}))
    return path


# Approvals: an optional, signed ceiling


def test_an_approval_carries_its_ceiling_and_one_without_stays_valid(site, build):
    built = build(DP2)
    capped = approve(site, built.id, {"tiny": "tiny"}, max_epsilon=3)
    assert json.loads(capped.path.read_text())["statement"]["max_epsilon"] == 3
    assert approvals.verify_approval(capped.path, site, built.id).max_epsilon == 3
    assert capped.to_json()["max_epsilon"] == 3
    capped.path.unlink()
    plain = approve(site, built.id, {"tiny": "tiny"})
    assert "max_epsilon" not in json.loads(plain.path.read_text())["statement"]
    assert approvals.verify_approval(plain.path, site, built.id).max_epsilon is None


@pytest.mark.parametrize("value", ["3", True, 0, -1.5, None, [3], float("nan"), float("inf")])
def test_a_ceiling_that_is_not_a_finite_number_above_0_makes_the_approval_malformed(site, build, value):
    built = build(DP2)
    statement = json.loads(approve(site, built.id, {"tiny": "tiny"}).path.read_text())["statement"]
    content = {"statement": {**statement, "max_epsilon": value}, "signature": base64.b64encode(b"\0" * 64).decode()}
    with pytest.raises(ApprovalRejected, match=r"^approval is malformed \(max_epsilon is not a finite number above 0\); "):
        approvals.verify_approval(content, site, built.id)


def test_the_signature_covers_the_ceiling_and_unknown_fields_are_still_refused(site, build, tmp_path):
    built = build(DP2)
    approval = approve(site, built.id, {"tiny": "tiny"}, max_epsilon=3)
    content = json.loads(approval.path.read_text())
    for edit in ({**content["statement"], "max_epsilon": 30}, {k: v for k, v in content["statement"].items() if k != "max_epsilon"}):
        approval.path.write_text(json.dumps({**content, "statement": edit}))
        with pytest.raises(ApprovalRejected, match="altered after signing"):
            approvals.verify_approval(approval.path, site, built.id)
    unknown = signed_file(site, {**content["statement"], "min_epsilon": 1}, tmp_path / "unknown.json")
    with pytest.raises(ApprovalRejected, match="statement has unknown fields min_epsilon"):
        approvals.verify_approval(unknown, site, built.id)


# Signing refuses what the guard would refuse


def test_approve_refuses_in_one_line_a_bundle_above_the_ceiling_or_without_dp(site, build):
    over, plain = build(DP8), build()
    with pytest.raises(CaiaError) as refused:
        approve(site, over.id, {"tiny": "tiny"}, bundle=over, max_epsilon=3)
    assert str(refused.value) == ("site site-2 would refuse this release: it requests epsilon 8, above this site's ceiling "
                                  "of 3 (set in its approval); ask for privacy=dp epsilon<=3; nothing was signed")
    with pytest.raises(CaiaError, match=r"it requests no differential privacy, which this site requires \(epsilon at most 3, "
                                        r"set in its approval\); add privacy=dp epsilon=\.\.\. delta=\.\.\.; nothing was signed"):
        approve(site, plain.id, {"tiny": "tiny"}, bundle=plain, max_epsilon=3)
    sites.set_policy(site.path, max_epsilon=4)
    with pytest.raises(CaiaError, match="it requests epsilon 8, above this site's ceiling of 4 \\(set in its policy\\)"):
        approve(sites.open_site(site.path), over.id, {"tiny": "tiny"}, bundle=over)
    for bad in (0, -2, float("nan"), float("inf")):
        with pytest.raises(CaiaError, match="an epsilon ceiling of .* must be a finite number above 0"):
            approve(site, over.id, {"tiny": "tiny"}, max_epsilon=bad)
    assert list(site.approvals_dir.iterdir()) == []


def test_cli_approve_with_max_epsilon_refuses_a_bundle_requesting_more(site, build, caia):
    over = build(DP8)
    code, out, err = caia("approve", over.path, "--site", site.path, "--key", reviewer_key(site), "--dataset", "tiny",
                          "--max-epsilon", "3")
    assert code == 2 and out == ""
    assert err == ("caia: error: site site-2 would refuse this release: it requests epsilon 8, above this site's ceiling "
                   "of 3 (set in its approval); ask for privacy=dp epsilon<=3; nothing was signed\n")
    assert list(site.approvals_dir.iterdir()) == []


# Site policy


def test_the_site_policy_sets_a_ceiling_removes_it_and_refuses_bad_values(tmp_path):
    site = sites.init(tmp_path / "s", "site-1", max_epsilon=3)
    assert site.max_epsilon == 3 and site.policy == {"max_approval_days": 90, "max_epsilon": 3}
    assert json.loads((site.path / "site.json").read_text())["policy"]["max_epsilon"] == 3
    assert sites.set_policy(site.path, max_epsilon=5.5).max_epsilon == 5.5
    assert sites.set_policy(site.path, sandbox="off").policy == {"max_approval_days": 90, "sandbox": "off", "max_epsilon": 5.5}
    assert sites.set_policy(site.path, max_epsilon=None).policy == {"max_approval_days": 90, "sandbox": "off"}
    before = (site.path / "site.json").read_bytes()
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(SiteError, match="--max-epsilon .* must be a finite number above 0"):
            sites.set_policy(site.path, sandbox="required", max_epsilon=bad)
        with pytest.raises(SiteError, match="--max-epsilon"):
            sites.init(tmp_path / f"bad{bad}", "site-9", max_epsilon=bad)
    assert (site.path / "site.json").read_bytes() == before  # nothing half-set
    meta = json.loads(before)
    for bad in ("3", True, 0, -1):
        (site.path / "site.json").write_text(json.dumps({**meta, "policy": {**meta["policy"], "max_epsilon": bad}}))
        with pytest.raises(SiteError, match="site site-1: site.json's policy.max_epsilon .* must be a finite number above 0"):
            sites.open_site(site.path)


def test_cli_site_init_policy_and_show_tell_the_ceiling(tmp_path, caia):
    code, out, _ = caia("site", "init", tmp_path / "s", "--name", "site-1", "--max-epsilon", "3")
    assert code == 0 and "differential privacy: required, epsilon at most 3" in out
    code, out, _ = caia("site", "show", tmp_path / "s")
    assert code == 0 and "  differential privacy: required, epsilon at most 3" in out.splitlines()
    code, out, _ = caia("site", "show", tmp_path / "s", "--json")
    assert json.loads(out)["policy"]["max_epsilon"] == 3
    code, out, _ = caia("site", "policy", tmp_path / "s", "--max-epsilon", "none", "--json")
    assert code == 0 and "max_epsilon" not in json.loads(out)["policy"]
    code, out, _ = caia("site", "policy", tmp_path / "s", "--max-epsilon", "1.5")
    assert code == 0 and out.splitlines()[-1] == "differential privacy: required, epsilon at most 1.5"
    code, _, err = caia("site", "policy", tmp_path / "s", "--max-epsilon", "lots")
    assert code == 2 and "--max-epsilon 'lots' must be a number above 0, or none" in err
    code, _, err = caia("site", "policy", tmp_path / "s", "--max-epsilon", "-1")
    assert code == 2 and "--max-epsilon -1 must be a finite number above 0" in err
    assert sites.open_site(tmp_path / "s").max_epsilon == 1.5


# The guard


def test_a_bundle_requesting_epsilon_8_is_refused_by_a_site_whose_approval_caps_it_at_3(site, build, tmp_path):
    built = build(DP8)
    approve(site, built.id, {"tiny": "tiny"}, max_epsilon=3)
    with pytest.raises(Refusal) as refused:
        admit(deploy(built, site, tmp_path), site.path)
    assert str(refused.value) == (f"site-2 refused bundle {built.id}: it requests epsilon 8, above this site's ceiling of 3 "
                                  "(set in its approval); ask for privacy=dp epsilon<=3")


def test_a_bundle_requesting_no_dp_is_refused_by_a_site_that_requires_it(site, build, tmp_path):
    built = build()
    approve(site, built.id, {"tiny": "tiny"})
    sites.set_policy(site.path, max_epsilon=3)
    with pytest.raises(Refusal) as refused:
        admit(deploy(built, site, tmp_path), site.path)
    assert str(refused.value) == (f"site-2 refused bundle {built.id}: it requests no differential privacy, which this site "
                                  "requires (epsilon at most 3, set in its policy); add privacy=dp epsilon=... delta=...")


def test_the_lower_ceiling_applies_and_a_request_within_it_is_admitted(site, build, tmp_path):
    built = build(DP8)
    approve(site, built.id, {"tiny": "tiny"}, max_epsilon=10)
    app = deploy(built, site, tmp_path)
    assert check_app(app, site, sandbox="off").bundle_id == built.id  # 8 <= 10, no policy
    with pytest.raises(Refusal, match="epsilon 8, above this site's ceiling of 5 \\(set in its policy\\)"):
        check_app(app, sites.set_policy(site.path, max_epsilon=5), sandbox="off")
    sites.set_policy(site.path, max_epsilon=None)
    (next(site.approvals_dir.iterdir())).unlink()
    approve(site, built.id, {"tiny": "tiny"}, max_epsilon=8)
    assert check_app(app, site, sandbox="off").bundle_id == built.id  # a ceiling is an upper bound: 8 <= 8


@pytest.mark.slow
def test_on_the_simulator_a_site_requiring_dp_refuses_a_bundle_without_and_the_run_says_so(tmp_path):
    from caia_jupyter.targets.submit import submit

    built = build_validated(tmp_path / "nb")  # requests no privacy; min_clients=1
    made = [make_site(tmp_path / "sites", name) for name in ("site-1", "site-2")]
    for site in made:
        approve(site, built.id, {"tiny": "tiny"})
    sites.set_policy(made[1].path, max_epsilon=3)
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    assert run.sites == {"site-1": "done", "site-2": "refused"}
    assert run.refusals["site-2"] == (f"site-2 refused bundle {built.id}: it requests no differential privacy, which this "
                                      "site requires (epsilon at most 3, set in its policy); add privacy=dp epsilon=... delta=...")
    assert set(run.metrics()["site"]) == {"site-1"} and run.guarantee is None
    assert "site-2: refused: site-2 refused bundle" in run_summary(run).text


# The review


def protection_cell(built, site=None) -> str:
    return next(c.source for c in review.review_notebook(built, site).cells if c.source.startswith("## Protection"))


def test_the_review_shows_the_protection_requested_and_the_sites_ceiling(site, build, tmp_path):
    plain = build()
    assert review.protection(plain.manifest["job"]) == ["none requested"]
    assert "none requested" in protection_cell(plain)
    dp = build(DP2 + " updates=weight_diff")
    assert review.protection(dp.manifest["job"]) == [
        "DP-SGD, epsilon 2, delta 1e-05, max_grad_norm 0.5, 1 local epoch per round",
        "sites send their weights' difference from the global model, not their weights"]
    assert review.protection({**dp.manifest["job"], "updates": None, "encryption": "he-ckks"})[1] == (
        "updates encrypted (CKKS), the aggregator sums ciphertexts")
    assert "Your site" not in protection_cell(dp)
    assert review.site_ceiling(site, dp.manifest["job"]).startswith("site-2 requires no differential privacy")
    sites.set_policy(site.path, max_epsilon=1)
    site = sites.open_site(site.path)
    assert review.site_ceiling(site, dp.manifest["job"]) == (
        "site-2 requires differential privacy with epsilon at most 1 (its policy); its guard would refuse this "
        "bundle: it requests epsilon 2, above this site's ceiling of 1 (set in its policy); ask for privacy=dp epsilon<=1")
    page = review.to_html(review.review_notebook(dp, site), "Review")
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())  # what the reader sees
    for line in ("Protection", *review.protection(dp.manifest["job"]), f"Your site: {review.site_ceiling(site, dp.manifest['job'])}"):
        assert line in text, line


def test_cli_review_prints_the_protection_and_with_site_its_ceiling(site, build, caia, tmp_path):
    dp = build(DP2)
    code, out, _ = caia("review", dp.path, "-o", tmp_path / "r.html")
    assert code == 0 and out.splitlines()[1] == "protection: DP-SGD, epsilon 2, delta 1e-05, max_grad_norm 0.5, 1 local epoch per round"
    sites.set_policy(site.path, max_epsilon=3)
    code, out, _ = caia("review", dp.path, "-o", tmp_path / "r.html", "--site", site.path, "--json")
    data = json.loads(out)
    assert data["site"]["max_epsilon"] == 3
    assert data["site"]["note"] == "site-2 requires differential privacy with epsilon at most 3 (its policy)"


# The run's record and the exported model


@pytest.fixture
def dp_run(tmp_path):
    """A fake finished DP run directory, written by hand as the launcher and the server write it."""
    run = tmp_path / "run"
    run.mkdir()
    privacy = {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0, "local_epochs": 1}
    (run / "run.json").write_text(json.dumps({"sites": {"site-1": "/s1", "site-2": "/s2"}, "rounds": 2, "min_clients": 1,
                                              "bundle_id": "sha256:x", "target": "simulator", "privacy": privacy}))
    (run / "sites.json").write_text(json.dumps({"site-1": {"state": "approved"}, "site-2": {"state": "approved"}}))
    (run / "status.json").write_text(json.dumps({"phase": "finished", "rounds_done": 2, "rounds": 2, "sites": ["site-1", "site-2"]}))
    records = [("site-1", 0, "epsilon", 1.4), ("site-2", 0, "epsilon", 1.5), ("site-1", 1, "epsilon", 2.9),
               ("site-2", 1, "epsilon", 2.95), ("site-1", 1, "accuracy", 0.8), ("site-1", 2, "accuracy", 0.9),
               ("site-2", 2, "accuracy", 0.7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps({"site": s, "round": r, "name": n, "value": v, "time": float(i)}) + "\n"
                                               for i, (s, r, n, v) in enumerate(records)))
    np.savez(run / "global_model.npz", weight=np.ones((2, 2), dtype=np.float32), bias=np.zeros(2, dtype=np.float32))
    (run / "outcome.json").write_text(json.dumps({"status": "finished", "message": "2 rounds",
                                                  "completed_sites": ["site-1", "site-2"], "failed_sites": {}}))
    return run


def test_a_dp_runs_record_and_exported_model_state_the_guarantee(dp_run):
    run = Run(dp_run)
    stated = {"bundle_id": "sha256:x", "mechanism": "dp-sgd", "accountant": "rdp", "epsilon": 3.0, "delta": 1e-5,
              "max_grad_norm": 1.0, "local_epochs": 1, "rounds": 2, "epsilon_spent": {"site-1": 2.9, "site-2": 2.95}}
    assert run.guarantee == {**stated, "model_sha256": None}  # before the model is exported
    state = torch.load(run.global_model, weights_only=True)  # still a plain state dict
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], torch.ones(2, 2))
    model_sha256 = hashlib.sha256((dp_run / "global_model.pt").read_bytes()).hexdigest()
    expected = {**stated, "model_sha256": model_sha256}
    assert run.guarantee_file == dp_run / GUARANTEE_FILE == dp_run / "global_model.guarantee.json"
    assert json.loads(run.guarantee_file.read_text()) == expected == run.guarantee
    summary = run_summary(run)
    assert (f"global model: {dp_run / 'global_model.pt'} (its guarantee: {dp_run / GUARANTEE_FILE})"
            in summary.text.splitlines())
    assert "guarantee: DP-SGD, (epsilon 3, delta 1e-05) per site; spent: site-1 2.9, site-2 2.95" in summary.text.splitlines()
    assert summary.data["guarantee"] == expected and summary.data["guarantee_file"] == str(dp_run / GUARANTEE_FILE)
    assert "privacy" not in summary.data  # one name for it everywhere


def test_a_run_without_dp_has_no_guarantee_and_no_sidecar(dp_run):
    spec = json.loads((dp_run / "run.json").read_text())
    del spec["privacy"]
    (dp_run / "run.json").write_text(json.dumps(spec))
    run = Run(dp_run)
    assert run.guarantee is None and run.global_model is not None and run.guarantee_file is None
    summary = run_summary(run)
    assert not (dp_run / GUARANTEE_FILE).exists() and "guarantee" not in summary.text.replace(str(dp_run), "")
    assert summary.data["guarantee"] is None and f"global model: {run.global_model}" in summary.text.splitlines()


def test_the_epsilon_metric_shows_in_the_terminal_and_the_widget_like_any_metric(dp_run):
    from caia_jupyter.kernel.widgets import RunWidget

    out = io.StringIO()
    follow(Run(dp_run), out=out, poll=0)
    lines = out.getvalue().splitlines()
    assert any("site-1: accuracy=0.8 epsilon=2.9" in line and "site-2: epsilon=2.95" in line for line in lines), lines
    widget = RunWidget(Run(dp_run))
    widget.refresh()
    assert ["site-2", 1, "epsilon", 2.95] in widget.records

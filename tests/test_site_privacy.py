"""A site's own privacy policy (privacy.json, NVFLARE's privacy scopes of its privacy filters): checked,
shown, installed where NVFLARE reads it and applied to what leaves the site; weight differences."""

from __future__ import annotations

import html
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import corpus
from caia_jupyter.contracts import fileset
from caia_jupyter.contracts.client_app import CLIENT_CONFIG, client_config
from caia_jupyter.contracts.errors import SiteError
from caia_jupyter.researcher import compose
from caia_jupyter.reviewer.review import render
from caia_jupyter.site.guard import Refusal, admit
from caia_jupyter.site.privacy_policy import PRIVACY_FILE, read_policy, scope_refusal
from caia_jupyter.targets.job import build_job
from caia_jupyter.targets.submit import submit
from conftest import approve, build_validated, make_site, set_source, write_corpus

FILTERS = "nvflare.app_common.filters"


def policy(*filters, default="strict", **extra) -> dict:
    return {"scopes": [{"name": "strict", "task_result_filters": list(filters)}], "default_scope": default, **extra}


def exclude(regex: str) -> dict:
    return {"path": f"{FILTERS}.ExcludeVars", "args": {"exclude_vars": regex}}


def percentile(p=10, gamma=0.01) -> dict:
    return {"path": f"{FILTERS}.percentile_privacy.PercentilePrivacy", "args": {"percentile": p, "gamma": gamma}}


def set_policy(site, content) -> None:
    (site.path / PRIVACY_FILE).write_text(content if isinstance(content, str) else json.dumps(content))


def weight_diff(nb):
    set_source(nb, "min_clients=1", "min_clients=1 updates=weight_diff")


# -- checking privacy.json -------------------------------------------------------------------------

@pytest.mark.parametrize("content, says", [
    ("{not json", "is not readable JSON"),
    ({"scopes": [{"name": "strict", "task_result_filters": [exclude("x")]}], "default_scope": "strict", "scopes_": 1},
     "'scopes_' is not allowed"),
    (policy({"path": "nvflare.app_common.filters.dxo_blocker.DXOBlocker", "args": {"data_kinds": ["WEIGHTS"]}}),
     "filter 'nvflare.app_common.filters.dxo_blocker.DXOBlocker' is not one of NVFLARE's privacy filters caia admits"),
    (policy({"path": "my_site.filters.ExcludeVars", "args": {"exclude_vars": "x"}}), "is not one of NVFLARE's privacy filters"),
    (policy(exclude("x"), default="lenient"), "default_scope 'lenient' is not one of its scopes (strict)"),
    (policy(exclude("x"), default=None), "default_scope None is not one of its scopes"),
    (policy(exclude("x"), components=[{"id": "c", "path": "os.system"}]), "'components' is not allowed"),
    (policy(percentile(p=150)), "PercentilePrivacy's percentile 150 must be a number above 0 and at most 100"),
    (policy(percentile(p=0, gamma=1e9)), "PercentilePrivacy's percentile 0 must be a number above 0 and at most 100 "
                                         "(0 shares every change)"),
    (policy(percentile(gamma=0)), "PercentilePrivacy's gamma 0 must be a number above 0"),
    (policy({"path": f"{FILTERS}.SVTPrivacy", "args": {"fractoin": 0.1}}), "NVFLARE's SVTPrivacy does not take these args"),
    (policy(exclude("(")), "exclude_vars '(' is not a regular expression"),
    (policy({"path": f"{FILTERS}.ExcludeVars", "args": {"exclude_vars": 3}}), "exclude_vars must be a regular expression or a list"),
    ({"scopes": [{"name": "s", "task_data_filters": [exclude("x")]}], "default_scope": "s"}, "use task_result_filters"),
    ({"scopes": [{"name": "s"}, {"name": "s"}], "default_scope": "s"}, "scope 's' is defined twice"),
])
def test_an_unusable_privacy_policy_is_refused_in_one_line_naming_the_problem(tmp_path, caia, content, says):
    site = make_site(tmp_path / "sites", "site-1")
    set_policy(site, content)
    with pytest.raises(SiteError) as refused:
        read_policy(site.path)
    assert says in str(refused.value) and str(refused.value).startswith(f"site-1/{PRIVACY_FILE}")
    assert "\n" not in str(refused.value)
    code, out, err = caia("site", "show", site.path)
    assert code == 2 and says in err and out == ""


def test_caia_site_show_prints_the_scope_every_job_gets(tmp_path, caia):
    site = make_site(tmp_path / "sites", "site-1")
    code, out, _ = caia("site", "show", site.path)
    assert code == 0 and "privacy scope: none (no privacy.json)" in out
    set_policy(site, {"scopes": [{"name": "strict", "task_result_filters": [exclude("bias"), percentile(20, 0.001)]},
                                 {"name": "open"}], "default_scope": "strict"})
    code, out, _ = caia("site", "show", site.path)
    assert code == 0
    assert "privacy scope applied to every job: strict: ExcludeVars(exclude_vars='bias'), " \
           "PercentilePrivacy(percentile=20, gamma=0.001)" in out
    assert "other privacy scope (caia's jobs name none, so it is never applied): open: no filters" in out
    code, out, _ = caia("site", "show", site.path, "--json")
    assert json.loads(out)["privacy"] == {"default_scope": "strict", "scopes": [
        {"name": "strict", "filters": [{"filter": "ExcludeVars", "args": {"exclude_vars": "bias"}},
                                       {"filter": "PercentilePrivacy", "args": {"percentile": 20, "gamma": 0.001}}]},
        {"name": "open", "filters": []}]}


# -- admission -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """The good corpus bundle sending full weights and one sending weight differences, as deployed apps."""
    root = tmp_path_factory.mktemp("privacy")
    full = compose.build(write_corpus("good", root / "full"))
    diff = compose.build(write_corpus("good", root / "diff", weight_diff))
    return {kind: (built, build_job(built, ["site-1"], root / f"job-{kind}", name=f"caia-{kind}") / "app_site-1")
            for kind, built in (("full", full), ("diff", diff))}


def admitted_copy(jobs, kind, site, tmp_path):
    built, app = jobs[kind]
    approve(site, built.id, {"tiny": "tiny"})
    return built, shutil.copytree(app, tmp_path / f"app-{kind}")


def test_a_weight_diff_bundle_carries_caias_diff_config_and_the_guard_holds_each_variant_to_its_own(jobs, tmp_path):
    built, app = jobs["diff"]
    config = (app / "config" / CLIENT_CONFIG).read_bytes()
    assert built.manifest["job"]["updates"] == "weight_diff" and config == client_config(updates="weight_diff")
    assert b'"params_transfer_type": "DIFF"' in config and config != client_config()
    assert fileset.content_problems(CLIENT_CONFIG, config, job={"updates": "weight_diff"}) == []
    assert fileset.content_problems(CLIENT_CONFIG, config)  # full weights' bundle with the diff config: not caia's
    assert fileset.content_problems(CLIENT_CONFIG, client_config(), job={"updates": "weight_diff"})


def test_a_site_whose_scope_needs_weight_differences_refuses_full_weights_naming_scope_and_fix(jobs, tmp_path):
    site = make_site(tmp_path / "sites", "site-1")
    set_policy(site, policy(exclude("bias"), percentile()))
    built, app = admitted_copy(jobs, "full", site, tmp_path)
    with pytest.raises(Refusal) as refused:
        admit(app, site.path)
    assert str(refused.value) == (
        f"site-1 refused bundle {built.id}: its privacy scope 'strict' applies PercentilePrivacy, which acts on weight "
        "differences, and this bundle sends full weights; rebuild it with `%%federated ... updates=weight_diff`")
    _, diff_app = admitted_copy(jobs, "diff", site, tmp_path)
    installed = tmp_path / "workspace" / "local" / PRIVACY_FILE
    installed.parent.mkdir(parents=True)
    admit(diff_app, site.path, privacy_file=installed)
    written = json.loads((site.path / PRIVACY_FILE).read_text())  # where NVFLARE reads it: its default scope alone
    assert json.loads(installed.read_text()) == {"scopes": written["scopes"][:1], "default_scope": "strict"}


def test_a_site_whose_scope_filters_updates_refuses_an_encrypted_bundle(tmp_path):
    """NVFLARE filters an update before the job's encryptor: an excluded entry leaves an encrypted
    update the server cannot add, so the site says so at once rather than never contributing."""
    site = make_site(tmp_path / "sites", "site-1")
    set_policy(site, policy(exclude("bias")))
    refusal = scope_refusal(read_policy(site.path), {"encryption": "he-ckks"})
    assert refusal == ("its privacy scope 'strict' applies ExcludeVars to every update, which an encrypted update cannot "
                       "pass through; this site cannot take a bundle with encryption=he")
    assert scope_refusal(read_policy(site.path), {}) is None  # full weights through ExcludeVars: fine
    set_policy(site, {"scopes": [{"name": "open", "task_result_filters": []}], "default_scope": "open"})
    assert scope_refusal(read_policy(site.path), {"encryption": "he-ckks"}) is None  # a scope without filters


def test_an_unusable_policy_refuses_every_bundle_and_no_policy_leaves_none_installed(jobs, tmp_path):
    site = make_site(tmp_path / "sites", "site-1")
    built, app = admitted_copy(jobs, "full", site, tmp_path)
    installed = tmp_path / "local" / PRIVACY_FILE
    installed.parent.mkdir()
    installed.write_text("a policy left from before")
    admit(app, site.path, privacy_file=installed)
    assert not installed.exists()  # the site removed its policy: nothing stale applies
    set_policy(site, policy({"path": "os.system", "args": {}}))
    with pytest.raises(Refusal) as refused:
        admit(jobs["full"][1], site.path)
    assert str(refused.value) == (f"site-1 refused bundle {built.id}: its privacy policy (privacy.json) is unusable, so it "
                                  "refuses every job (the site's log says why)")


def test_the_review_for_a_site_shows_the_scope_it_applies(jobs, tmp_path, caia):
    site = make_site(tmp_path / "sites", "site-1")
    set_policy(site, policy(exclude("bias"), percentile()))
    built, _ = jobs["full"]
    text = shown(render(built.path, tmp_path / "review.html", site))
    assert ("Your site's privacy scope¶Each round your site sends its full weights. Before an update leaves site site-1, "
            "NVFLARE applies the site's own privacy policy") in text
    assert "privacy scope applied to every job: strict: ExcludeVars(exclude_vars='bias'), " \
           "PercentilePrivacy(percentile=10, gamma=0.01)" in text
    assert "⚠ Your site's guard refuses this bundle: its privacy scope 'strict' applies PercentilePrivacy" in text
    code, out, _ = caia("review", jobs["diff"][0].path, "-o", tmp_path / "diff.html", "--site", site.path)
    text = shown(tmp_path / "diff.html")
    assert code == 0 and "Each round your site sends its weights' difference from the global model" in text
    assert "guard refuses" not in text and "sends back their difference from the global model it received" in text
    assert "privacy scope" not in shown(render(built.path, tmp_path / "plain.html"))  # no site: no scope


def shown(page) -> str:
    """The text a reader of an HTML page sees (tags dropped, entities read)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))


# -- applied in the simulator ----------------------------------------------------------------------

def local_step(state: dict) -> dict:
    """The corpus notebook's `train` on SAMPLE_CSV (one full-batch SGD step, lr 0.1) from `state`."""
    model = nn.Linear(2, 2)
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    frame = pd.read_csv(io.StringIO(corpus.SAMPLE_CSV))
    x, y = torch.tensor(frame[["x1", "x2"]].to_numpy(), dtype=torch.float32), torch.tensor(frame["label"].to_numpy())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def run_one_site(tmp_path, content, edit=None):
    """Run the corpus notebook (edited) on the simulator at one site with privacy.json `content`;
    returns (the initial model, the global model) as {entry: array}."""
    built = build_validated(tmp_path / "nb", edit=edit)
    site = make_site(tmp_path / "sites", "site-1")
    set_policy(site, content)
    approve(site, built.id, {"tiny": "tiny"})
    run = submit(built.path, [site.path], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    with np.load(run.path / "job" / "app_server" / "custom" / "initial_model.npz") as initial:
        start = dict(initial)
    final = {k: v.numpy() for k, v in torch.load(run.global_model, weights_only=True).items()}
    return start, final, run


@pytest.mark.slow
def test_a_simulated_sites_excludevars_scope_keeps_that_layer_from_leaving_the_site(tmp_path):
    start, final, run = run_one_site(tmp_path, policy(exclude("^bias$")))
    assert np.array_equal(final["bias"], start["bias"])  # the only site's bias never reached the server
    expected = start
    for _ in range(2):  # rounds: the site's weight is the global one (one site), its bias stays the initial one
        expected = {"weight": local_step(expected)["weight"], "bias": start["bias"]}
    assert np.allclose(final["weight"], expected["weight"], atol=1e-6) and not np.allclose(final["weight"], start["weight"])


@pytest.mark.slow
def test_weight_differences_through_a_sites_percentile_privacy_make_the_global_model_nvflares_filter_computes(tmp_path):
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.filters import PercentilePrivacy

    start, final, _ = run_one_site(tmp_path, policy(percentile(p=50, gamma=0.0005)), edit=weight_diff)
    expected = start
    for _ in range(2):  # each round: the site's difference, filtered by NVFLARE's own filter, added to the global model
        trained = local_step(expected)
        dxo = DXO(DataKind.WEIGHT_DIFF, {k: trained[k] - expected[k] for k in expected}, {MetaKey.NUM_STEPS_CURRENT_ROUND: 24})
        diff = PercentilePrivacy(percentile=50, gamma=0.0005).process_dxo(dxo, Shareable(), FLContext()).data
        expected = {k: (expected[k].astype(np.float64) + diff[k]).astype(np.float32) for k in expected}
    moved = np.concatenate([(final[k] - start[k]).ravel() for k in start])
    assert np.all(np.abs(moved) <= 2 * 24 * 0.0005 + 1e-6) and np.count_nonzero(moved) > 0  # limited as gamma says
    assert all(np.allclose(final[k], expected[k], atol=1e-6) for k in start)

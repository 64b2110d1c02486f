"""DP-SGD at a site: `ctx.make_private` calibrated by Opacus for the whole run, the accounting the
runtime reads back, and what the site's runtime refuses to send (`flare_client.check_private`)."""

from __future__ import annotations

import hashlib
import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from caia_jupyter.contracts import failures
from caia_jupyter.contracts.errors import ContractError
from caia_jupyter.contracts.failures import REASONS
from caia_jupyter.researcher import compose, validation
from caia_jupyter.researcher.runs import local_failure_record
from caia_jupyter.site import flare_client
from caia_jupyter.site.context import Context
from caia_jupyter.site.runtime import Failed, LocalCode, RoundResult
from caia_jupyter.targets.submit import submit
from caia_jupyter.terminal import run_summary
from conftest import approve, build_validated, make_site, set_source, write_corpus

DP = {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0, "local_epochs": 1}


def loader(rows: int = 200, batch_size: int = 20):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 2, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch_size)


def train_private(model, data, ctx, passes: int = 1) -> dict:
    """A round of DP-SGD as federated code writes it: a fresh optimizer, ctx.make_private, `passes` epochs."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    private_model, private_optimizer, private_loader = ctx.make_private(model, optimizer, data)
    for _ in range(passes):
        for x, y in private_loader:
            private_optimizer.zero_grad()
            nn.functional.cross_entropy(private_model(x), y).backward()
            private_optimizer.step()
    return {"num_samples": len(data.dataset)}


@pytest.mark.filterwarnings("ignore")
def test_make_private_every_round_keeps_the_whole_run_within_the_budget():
    rounds = 4
    ctx = Context("site-1", {}, {}, rounds=rounds, privacy=DP)
    model, data = nn.Linear(2, 2), loader()
    spent = []
    for _ in range(rounds):
        train_private(model, data, ctx)
        spent.append(ctx.privacy_spent())
        assert len(model._forward_hooks) == 1, "make_private wrapped the same model again"
    epsilons = [epsilon for epsilon, _ in spent]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:])), epsilons
    assert 0.5 * DP["epsilon"] < epsilons[-1] <= DP["epsilon"], epsilons
    assert [steps for _, steps in spent] == [10, 20, 30, 40]  # one accountant: 10 batches per pass, every round
    assert list(model.state_dict()) == ["weight", "bias"]  # the plain model: what caia sends


@pytest.mark.filterwarnings("ignore")
def test_more_passes_than_the_request_declares_overspend_the_budget():
    ctx = Context("site-1", {}, {}, rounds=2, privacy=DP)
    model, data = nn.Linear(2, 2), loader()
    train_private(model, data, ctx, passes=2)
    train_private(model, data, ctx, passes=2)
    assert ctx.privacy_spent()[0] > DP["epsilon"]


@pytest.mark.filterwarnings("ignore")
def test_make_private_trains_a_model_evaluate_left_in_eval_mode():
    ctx = Context("site-1", {}, {}, rounds=1, privacy=DP)
    model = nn.Linear(2, 2).eval()
    train_private(model, loader(), ctx)
    assert model.training and ctx.privacy_spent()[1] == 10


def test_make_private_without_a_dp_request_says_to_add_it():
    ctx = Context("site-1", {}, {})
    with pytest.raises(ContractError, match=r"requests no differential privacy; add privacy=dp") as raised:
        ctx.make_private(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), loader())
    assert "\n" not in str(raised.value)
    assert ctx.privacy_spent() == (0.0, 0)


@pytest.mark.filterwarnings("ignore")
def test_a_batchnorm_model_is_refused_with_opacus_explanation():
    ctx = Context("site-1", {}, {}, rounds=1, privacy=DP)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ContractError, match="BatchNorm cannot support training with differential privacy") as raised:
        ctx.make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader())
    assert raised.value.failure == "dp_unsupported" and raised.value.entry == "train"


def test_a_loader_that_is_not_a_dataloader_is_refused():
    ctx = Context("site-1", {}, {}, rounds=1, privacy=DP)
    model = nn.Linear(2, 2)
    with pytest.raises(ContractError, match="needs a torch DataLoader"):
        ctx.make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), [(torch.zeros(1, 2), torch.zeros(1))])


# -- LocalCode: the round's result carries the accountant's numbers ----------------------------------

FEDERATED = """
    import torch
    from torch import nn

    def build_model():
        torch.manual_seed(0)
        return nn.Linear(2, 2)

    def load_data(ctx):
        x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=10)

    def train(model, data, ctx):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        PRIVATE
        for x, y in data:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return {"num_samples": 100, "METRIC": 1.0}

    def evaluate(model, data, ctx):
        return {"accuracy": 0.5}
"""


def local_code(tmp_path, private: bool = True, metric: str = "train_loss", privacy=DP) -> LocalCode:
    line = "model, optimizer, data = ctx.make_private(model, optimizer, data)" if private else "pass"
    source = textwrap.dedent(FEDERATED).replace("PRIVATE", line).replace("METRIC", metric).encode()
    (tmp_path / "federated.py").write_bytes(source)
    code = LocalCode(tmp_path, hashlib.sha256(source).hexdigest(), Context("site-1", {}, {}, rounds=2, privacy=privacy))
    code.start()
    return code


@pytest.mark.filterwarnings("ignore")
def test_local_code_reports_the_epsilon_spent_and_the_steps_each_round(tmp_path):
    code = local_code(tmp_path)
    weights = {k: v.numpy() for k, v in code.model.state_dict().items()}
    first, second = code.round(weights, 0), code.round(weights, 1)
    assert (first.dp_steps, second.dp_steps) == (10, 20)
    assert 0 < first.epsilon < second.epsilon <= DP["epsilon"]
    assert set(second.weights) == {"weight", "bias"}


def test_local_code_without_dp_reports_no_privacy(tmp_path):
    code = local_code(tmp_path, private=False, privacy=None)
    result = code.round({k: v.numpy() for k, v in code.model.state_dict().items()}, 0)
    assert (result.epsilon, result.dp_steps) == (None, None)


def test_a_code_metric_named_epsilon_is_refused_when_dp_is_requested(tmp_path):
    code = local_code(tmp_path, metric="epsilon")
    with pytest.raises(Failed) as raised:
        code.round({k: v.numpy() for k, v in code.model.state_dict().items()}, 0)
    assert raised.value.report == {"entry": "train", "round": 0, "category": "bad_metrics"}
    assert "'epsilon'" in raised.value.record["message"] and "reserves" in raised.value.record["message"]


# -- the site's runtime: what it refuses to send ----------------------------------------------------

def result(num_samples=100, epsilon=1.0, dp_steps=10) -> RoundResult:
    return RoundResult(num_samples, {}, {}, {"w": np.zeros(2, np.float32)}, epsilon, dp_steps)


@pytest.mark.parametrize("round_result, steps_before", [
    pytest.param(result(epsilon=0.0, dp_steps=0), 0, id="no step at all"),
    pytest.param(result(dp_steps=10), 10, id="no step this round"),
    pytest.param(result(dp_steps=5), 10, id="fewer steps than before"),
    pytest.param(result(epsilon=None, dp_steps=None), 0, id="no accounting"),
])
def test_an_update_trained_outside_dp_sgd_is_not_sent(round_result, steps_before):
    with pytest.raises(Failed) as raised:
        flare_client.check_private(DP, round_result, steps_before, 1)
    assert raised.value.report == {"entry": "train", "round": 1, "category": "not_private"}
    assert raised.value.record["budget"] == 3.0


def test_an_update_beyond_the_budget_is_not_sent_and_the_record_keeps_the_numbers():
    with pytest.raises(Failed) as raised:
        flare_client.check_private(DP, result(epsilon=3.2, dp_steps=30), 20, 2)
    assert raised.value.report == {"entry": "runtime", "round": 2, "category": "budget_spent"}
    assert (raised.value.record["epsilon"], raised.value.record["dp_steps"]) == (3.2, 30)
    line = failures.describe("site-2", failures.Report(**raised.value.report))
    assert line == "site-2 failed in caia's site runtime at round 2: its privacy budget is spent; the site stopped sending updates"
    assert "3.2" not in json.dumps(raised.value.report)


def test_private_updates_within_the_budget_are_sent():
    flare_client.check_private(DP, result(epsilon=3.0, dp_steps=30), 20, 2)  # at the budget: still within it
    flare_client.check_private(DP, result(num_samples=0, epsilon=1.0, dp_steps=10), 10, 1)  # no examples: no step needed
    flare_client.check_budget_left(DP, (2.9, 30), 3)


def test_a_site_whose_budget_is_reached_stops_before_training_further():
    with pytest.raises(Failed) as raised:
        flare_client.check_budget_left(DP, (3.0, 30), 3)
    assert raised.value.report == {"entry": "runtime", "round": 3, "category": "budget_spent"}


# -- local validation (a real papermill kernel) and the NVFLARE simulator, with the sandbox -----------

BUDGET = 3.0  # the corpus "dp" notebook's epsilon; its rounds are 3


def epsilons(run, site: str) -> list[float]:
    """The epsilon `site` reported, round by round."""
    frame = run.metrics()
    mine = frame[(frame["site"] == site) & (frame["name"] == "epsilon")].sort_values("round")
    assert list(mine["round"]) == list(range(len(mine)))
    return list(mine["value"])


@pytest.mark.slow
def test_validation_runs_make_private_on_the_sample_and_names_what_opacus_cannot_train(tmp_path):
    built = build_validated(tmp_path / "ok", "dp")  # asserts it passes
    assert built.manifest["job"]["privacy"]["epsilon"] == BUDGET
    batchnorm = compose.build(write_corpus("dp", tmp_path / "bn", edit=lambda nb: set_source(
        nb, "return nn.Linear(2, 2)", "return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))")))
    result = validation.validate(batchnorm)
    assert not result.passed
    assert "BatchNorm cannot support training with differential privacy" in result.error, result.error
    assert "line 4, in train: ContractError: Opacus cannot train this model" in result.error and "\n" not in result.error


@pytest.mark.slow
def test_a_dp_run_spends_epsilon_every_round_within_the_budget_at_every_site(tmp_path):
    built = build_validated(tmp_path / "nb", "dp")
    made = [make_site(tmp_path / "sites", name) for name in ("site-1", "site-2", "site-3")]
    for site in made:
        approve(site, built.id, {"tiny": "tiny"})
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=600) == "finished", run.message
    assert run.sites == {s.name: "done" for s in made}
    assert {a["sandbox"] for a in json.loads((run.path / "sites.json").read_text()).values()} == {"landlock"}
    for site in made:
        spent = epsilons(run, site.name)
        assert len(spent) == 3 and all(a < b for a, b in zip(spent, spent[1:])), spent
        assert 0.5 * BUDGET < spent[-1] <= BUDGET, spent
    state = torch.load(run.global_model, weights_only=True)
    assert set(state) == {"weight", "bias"}
    guarantee = json.loads(run.guarantee_file.read_text())  # the guarantee travels with the model it names
    assert guarantee == {
        "bundle_id": built.id, "model_sha256": hashlib.sha256(run.global_model.read_bytes()).hexdigest(),
        "mechanism": "dp-sgd", "accountant": "rdp", "epsilon": BUDGET, "delta": 1e-5, "max_grad_norm": 1.0,
        "local_epochs": 1, "rounds": 3, "epsilon_spent": {s.name: epsilons(run, s.name)[-1] for s in made}}
    assert f"global model: {run.global_model} (its guarantee: {run.guarantee_file})" in run_summary(run).text


@pytest.mark.slow
def test_a_site_stops_an_update_that_skipped_dp_and_one_whose_budget_ran_out_and_the_run_goes_on(tmp_path):
    """site-2's train skips ctx.make_private; site-3's makes three passes a round where the request
    declares one, so its budget runs out after round 0; site-1 keeps the contract."""
    def edit(nb):
        set_source(nb, "    model, optimizer, loader = ctx.make_private(model, optimizer, data)\n",
                   "    if ctx.site == 'site-2':\n        loader = data\n    else:\n"
                   "        model, optimizer, loader = ctx.make_private(model, optimizer, data)\n"
                   "    if ctx.site == 'site-3':\n        loader = [batch for _ in range(3) for batch in loader]\n")

    built = build_validated(tmp_path / "nb", "dp", edit=edit)
    made = [make_site(tmp_path / "sites", name) for name in ("site-1", "site-2", "site-3")]
    for site in made:
        approve(site, built.id, {"tiny": "tiny"})
    run = submit(built.path, [s.path for s in made], runs_root=tmp_path / "runs")
    assert run.wait(timeout=600) == "finished", run.message
    assert run.sites == {"site-1": "done", "site-2": "failed", "site-3": "failed"}
    records = {name: local_failure_record(run.path, name) for name in ("site-2", "site-3")}
    assert run.failures == {
        "site-2": f"site-2 failed in train at round 0: {REASONS['not_private']}; full record on this machine: {records['site-2']}",
        "site-3": f"site-3 failed in caia's site runtime at round 1: {REASONS['budget_spent']}; "
                  f"full record on this machine: {records['site-3']}"}
    assert "site-2 left at round 0" in run.message and "site-3 left at round 1" in run.message
    frame = run.metrics()
    assert "site-2" not in set(frame["site"]), "a metric of site-2's round left the site"  # nothing left before it stopped
    assert len(epsilons(run, "site-3")) == 1  # round 0 went out; round 1, over budget, did not
    assert epsilons(run, "site-3")[0] <= BUDGET
    spent = epsilons(run, "site-1")
    assert len(spent) == 3 and spent[-1] <= BUDGET
    kept = {name: json.loads(path.read_text()) for name, path in records.items()}
    assert (kept["site-2"]["dp_steps"], kept["site-2"]["num_samples"]) == (0, 24)
    assert kept["site-3"]["epsilon"] > kept["site-3"]["budget"] == BUDGET

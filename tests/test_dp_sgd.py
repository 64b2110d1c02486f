"""DP-SGD at a site: `ctx.make_private` calibrated by Opacus for the whole run, the accounting the
runtime reads back, and what the site's runtime refuses to send (`flare_client.check_private`)."""

from __future__ import annotations

import hashlib
import json
import textwrap
import warnings

import numpy as np
import pandas as pd
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
from caia_jupyter.site.dp_sgd import Spent, calibrated_noise, check_validation_round, epsilon_of
from caia_jupyter.site.runtime import Failed, LocalCode, RoundResult
from caia_jupyter.targets.submit import submit
from caia_jupyter.terminal import run_summary
from conftest import approve, build_validated, make_site, set_source, write_corpus

DP = {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0, "local_epochs": 1}


def loader(rows: int = 200, batch_size: int = 20):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 2, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch_size)


def fake_reader(rows: int):
    """A fake of the site's reader of released tables: a frame of `rows` rows, whatever is asked."""
    return lambda name, spec: pd.DataFrame({"x": range(rows)})


def released(rows: int = 200, rounds: int = 1, privacy=DP) -> Context:
    """A Context whose code has read one released dataset of `rows` rows (through `fake_reader`)."""
    ctx = Context("site-1", {}, {"tiny": {"columns": []}}, rounds=rounds, reader=fake_reader(rows), privacy=privacy)
    ctx.dataset("tiny")
    return ctx


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
    ctx = released(rounds=rounds)
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
    ctx = released(rounds=2)
    model, data = nn.Linear(2, 2), loader()
    train_private(model, data, ctx, passes=2)
    train_private(model, data, ctx, passes=2)
    assert ctx.privacy_spent()[0] > DP["epsilon"]


@pytest.mark.filterwarnings("ignore")
def test_make_private_trains_a_model_evaluate_left_in_eval_mode():
    ctx = released()
    model = nn.Linear(2, 2).eval()
    train_private(model, loader(), ctx)
    assert model.training and ctx.privacy_spent()[1] == 10


def test_make_private_without_a_dp_request_says_to_add_it():
    ctx = Context("site-1", {}, {})
    with pytest.raises(ContractError, match=r"requests no differential privacy; add privacy=dp") as raised:
        ctx.make_private(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1), loader())
    assert "\n" not in str(raised.value)
    assert ctx.privacy_spent() == (0.0, 0)


def test_a_batchnorm_model_is_refused_naming_the_layer_and_the_fix():
    ctx = released()
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ContractError) as raised:
        ctx.make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader())
    assert str(raised.value) == (
        "Opacus cannot train BatchNorm layers with differential privacy (they mix the examples of a batch): "
        "1 (BatchNorm1d); use GroupNorm in build_model, or opacus.validators.ModuleValidator.fix(model)")
    assert raised.value.failure == "dp_unsupported" and raised.value.entry == "train"


def test_a_budget_too_low_for_the_run_names_the_numbers():
    ctx = released(rounds=3, privacy={**DP, "epsilon": 0.01})
    model = nn.Linear(2, 2)
    with pytest.raises(ContractError) as raised:
        ctx.make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader())
    assert str(raised.value) == (
        "the privacy budget is too low: epsilon 0.01 at delta 1e-05 cannot cover 3 passes (rounds 3 x local_epochs 1) "
        "at sample rate 0.1 (1/batches per pass); request a larger epsilon, fewer rounds or local_epochs, or use "
        "smaller batches")


def test_training_through_make_private_prints_no_backward_hook_warning():
    import warnings

    ctx, model = released(), nn.Linear(2, 2)
    ctx.private_training.model = model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        train_private(model, loader(), ctx)
        warnings.warn("Full backward hook is firing, but another warning")  # only the known one is silenced
    assert [str(w.message) for w in caught if "backward hook" in str(w.message)] == [
        "Full backward hook is firing, but another warning"]


def test_the_request_is_the_sites_the_code_cannot_replace_it():
    ctx = released()
    with pytest.raises(AttributeError):
        ctx.privacy = {**DP, "delta": 0.99}
    with pytest.raises(TypeError):
        ctx.privacy["delta"] = 0.99
    assert ctx.privacy["delta"] == DP["delta"] and ctx.private_training.request.delta == DP["delta"]


@pytest.mark.filterwarnings("ignore")
def test_make_private_refuses_a_model_other_than_the_one_train_received():
    ctx, model, decoy = released(), nn.Linear(2, 2), nn.Linear(2, 2)
    ctx.private_training.model = model  # as runtime.run_round sets it
    with pytest.raises(ContractError, match="a model other than the one train received") as raised:
        ctx.make_private(decoy, torch.optim.SGD(decoy.parameters(), lr=0.1), loader())
    assert raised.value.failure == "not_private"
    train_private(model, loader(), ctx)  # train's own model, twice (its wrapper the second time)
    train_private(model, loader(), ctx)


def test_make_private_refuses_a_loader_over_more_rows_than_were_released():
    ctx, model = released(rows=100), nn.Linear(2, 2)
    with pytest.raises(ContractError) as raised:
        ctx.make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader(rows=200))
    assert str(raised.value) == ("ctx.make_private: the loader holds 200 rows, more than the 100 the site released to "
                                 "this bundle; give it a loader over the released data")


def test_a_loader_that_is_not_a_dataloader_is_refused():
    ctx = released()
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
        ctx.dataset("tiny")
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
    ctx = Context("site-1", {}, {"tiny": {"columns": []}}, rounds=2, reader=fake_reader(100), privacy=privacy)
    code = LocalCode(tmp_path, hashlib.sha256(source).hexdigest(), ctx)
    code.start()
    return code


@pytest.mark.filterwarnings("ignore")
def test_local_code_reports_its_accountant_history_and_the_site_accounts_it(tmp_path):
    code = local_code(tmp_path)
    weights = {k: v.numpy() for k, v in code.model.state_dict().items()}
    first = code.round(weights, 0)
    sigma = calibrated_noise(DP, 2, 0.1)
    assert first.dp_history == [[sigma, 0.1, 10]] and code.released_rows == 100
    after_first = flare_client.check_private(DP, 2, first, Spent(), code.released_rows, 0)
    second = code.round(weights, 1)
    assert second.dp_history == [[sigma, 0.1, 20]]
    after_second = flare_client.check_private(DP, 2, second, after_first, code.released_rows, 1)
    assert (after_first.steps, after_second.steps) == (10, 20)
    assert 0 < after_first.epsilon < after_second.epsilon <= DP["epsilon"]
    assert after_second.epsilon == pytest.approx(code.ctx.privacy_spent()[0])  # the site's number is Opacus's
    assert set(second.weights) == {"weight", "bias"}


def test_local_code_without_dp_reports_no_privacy(tmp_path):
    code = local_code(tmp_path, private=False, privacy=None)
    result = code.round({k: v.numpy() for k, v in code.model.state_dict().items()}, 0)
    assert result.dp_history is None


def test_a_code_metric_named_epsilon_is_refused_when_dp_is_requested(tmp_path):
    code = local_code(tmp_path, metric="epsilon")
    with pytest.raises(Failed) as raised:
        code.round({k: v.numpy() for k, v in code.model.state_dict().items()}, 0)
    assert raised.value.report == {"entry": "train", "round": 0, "category": "bad_metrics"}
    assert "'epsilon'" in raised.value.record["message"] and "reserves" in raised.value.record["message"]


# -- the site's runtime: what it refuses to send ----------------------------------------------------

def sigma() -> float:
    """The noise the site calibrates for DP over 2 rounds at sample rate 0.1."""
    return calibrated_noise(DP, 2, 0.1)


def result(history, num_samples=100) -> RoundResult:
    return RoundResult(num_samples, {}, {}, {"w": np.zeros(2, np.float32)}, history)


def accounted(steps: int) -> Spent:
    return Spent(0.5, ((sigma(), 0.1, steps),))


@pytest.mark.parametrize("history, before, num_samples", [
    pytest.param([], Spent(), 100, id="no step at all"),
    pytest.param([], Spent(), 0, id="no step, no examples claimed: the weights would still leave"),
    pytest.param("10 steps", Spent(), 100, id="unreadable"),
    pytest.param(None, Spent(), 100, id="no accounting"),
    pytest.param([[1e308, 0.1, 10**13]], Spent(), 100, id="steps beyond any run"),
    pytest.param([["1.5", 0.1, 10]], Spent(), 100, id="a number as text"),
    pytest.param(lambda: [[sigma(), 0.1, 10]], accounted(10), 100, id="no step this round"),
    pytest.param(lambda: [[sigma(), 0.1, 5]], accounted(10), 100, id="fewer steps than before"),
    pytest.param(lambda: [[sigma(), 0.5, 30]], accounted(10), 100, id="a history that does not continue"),
    pytest.param(lambda: [[sigma() / 2, 0.1, 10]], Spent(), 100, id="less noise than the site calibrates"),
    pytest.param([[0.5, 1e-5, 10]], Spent(), 100, id="a sample rate below one over the released rows"),
])
def test_an_update_trained_outside_the_sites_dp_sgd_is_not_sent(history, before, num_samples):
    with pytest.raises(Failed) as raised:
        flare_client.check_private(DP, 2, result(history() if callable(history) else history, num_samples), before, 100, 1)
    assert raised.value.report == {"entry": "train", "round": 1, "category": "not_private"}
    assert raised.value.record["budget"] == 3.0 and "\n" not in raised.value.record["message"]


def test_the_site_names_why_it_refused_an_update():
    def refused(history, before=Spent(), rows=100) -> str:
        with pytest.raises(Failed) as raised:
            flare_client.check_private(DP, 2, result(history), before, rows, 0)
        return raised.value.record["message"]

    assert refused([]).startswith("train took no DP-SGD step this round; train with what ctx.make_private(")
    assert refused([[sigma(), 0.1, 10]], rows=5).startswith("train's DP-SGD sample rate 0.1 is below 1/5 (one over the "
                                                            "rows the site released)")
    assert refused([[sigma(), 0.1, 10]], rows=0).startswith("train's DP-SGD ran on no dataset the site released")
    assert refused([[0.5, 0.1, 10]]).startswith(f"train's DP-SGD noise multiplier 0.5 is below the {sigma():.6g} the site "
                                                "calibrates at sample rate 0.1")


def test_an_update_beyond_the_budget_is_not_sent_and_the_record_names_the_steps():
    with pytest.raises(Failed) as raised:
        flare_client.check_private(DP, 2, result([[sigma(), 0.1, 40]]), accounted(20), 100, 1)
    assert raised.value.report == {"entry": "runtime", "round": 1, "category": "budget_spent"}
    record = raised.value.record
    assert record["epsilon"] > 3 and (record["dp_steps"], record["calibrated_steps"]) == (40, 20)
    assert "40 DP-SGD steps where the noise is calibrated for 20 over the run (2 rounds x local_epochs 1 passes)" in record["message"]
    line = failures.describe("site-2", failures.Report(**raised.value.report))
    assert line == "site-2 failed in caia's site runtime at round 1: its privacy budget is spent; the site stopped sending updates"
    assert str(record["epsilon"])[:3] not in json.dumps(raised.value.report)


def test_private_updates_within_the_budget_are_sent_with_the_sites_epsilon():
    first = flare_client.check_private(DP, 2, result([[sigma(), 0.1, 10]]), Spent(), 100, 0)
    second = flare_client.check_private(DP, 2, result([[sigma(), 0.1, 20]], num_samples=0), first, 100, 1)
    assert 0 < first.epsilon < second.epsilon <= DP["epsilon"] and second.steps == 20
    assert second.epsilon == pytest.approx(epsilon_of([(sigma(), 0.1, 20)], DP["delta"]))
    flare_client.check_budget_left(DP, Spent(2.9, ((sigma(), 0.1, 30),)), 3)


def test_a_site_whose_budget_is_reached_stops_before_training_further():
    with pytest.raises(Failed) as raised:
        flare_client.check_budget_left(DP, Spent(3.0, ((sigma(), 0.1, 30),)), 3)
    assert raised.value.report == {"entry": "runtime", "round": 3, "category": "budget_spent"}


def test_validation_fails_a_round_without_dp_or_with_more_passes_than_local_epochs():
    ctx = released(rows=200)
    with pytest.raises(ContractError, match=r"train took no DP-SGD step this round; train with what ctx.make_private"):
        check_validation_round(ctx)
    model = nn.Linear(2, 2)
    ctx.private_training.model = model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_private(model, loader(), ctx, passes=2)
    with pytest.raises(ContractError) as raised:
        check_validation_round(ctx)
    assert str(raised.value).startswith("train took 20 DP-SGD steps in one round where local_epochs=1 passes over its "
                                        "loader take 10")
    assert "raise local_epochs on the %%federated line" in str(raised.value)
    honest, fresh = released(rows=200), nn.Linear(2, 2)
    honest.private_training.model = fresh
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_private(fresh, loader(), honest)
    assert check_validation_round(honest).steps == 10
    assert check_validation_round(Context("site-1", {}, {})) is None


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
    assert result.error.endswith("line 4, in train: ContractError: Opacus cannot train BatchNorm layers with differential "
                                 "privacy (they mix the examples of a batch): 1 (BatchNorm1d); use GroupNorm in build_model, "
                                 "or opacus.validators.ModuleValidator.fix(model)"), result.error
    forgot = validation.validate(compose.build(write_corpus("dp", tmp_path / "forgot", edit=lambda nb: set_source(
        nb, "    model, optimizer, loader = ctx.make_private(model, optimizer, data)\n", "    loader = data\n"))))
    assert not forgot.passed
    assert forgot.error.endswith("in train: ContractError: train took no DP-SGD step this round; train with what "
                                 "ctx.make_private(model, optimizer, data_loader) returns"), forgot.error
    twice = validation.validate(compose.build(write_corpus("dp", tmp_path / "twice", edit=lambda nb: set_source(
        nb, "    for x, y in loader:\n", "    for x, y in [batch for _ in range(2) for batch in loader]:\n"))))
    assert not twice.passed
    assert "in train: ContractError: train took " in twice.error and "raise local_epochs on the %%federated line" in twice.error


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
    assert (kept["site-2"]["dp_steps_before"], kept["site-2"]["num_samples"]) == (0, 24)
    assert kept["site-2"]["message"].startswith("train took no DP-SGD step this round")
    assert kept["site-3"]["epsilon"] > kept["site-3"]["budget"] == BUDGET
    assert kept["site-3"]["dp_steps"] > kept["site-3"]["calibrated_steps"] == 12  # 3 rounds x 1 pass of 4 batches


def test_the_noise_covers_every_step_of_the_run_whatever_the_float_rounding_of_its_sample_rate():
    """Opacus turns epochs into steps as int(epochs / sample_rate), one short for 117 batches x 5 rounds;
    calibrated in steps, the run's 585 steps stay within the budget."""
    request = {"epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0, "local_epochs": 1}
    rate = 1 / 117
    sigma = calibrated_noise(request, 5, rate)
    assert epsilon_of([(sigma, rate, 585)], 1e-5) <= 8.0


def test_an_update_may_not_claim_more_examples_than_the_rows_released():
    """num_samples weighs the update and scales NVFLARE's percentile and SVT clipping: the site bounds it."""
    flare_client.check_num_samples(24, 24, 0)
    flare_client.check_num_samples(10**6, 0, 0)  # the code read no released data: nothing to bound it by
    with pytest.raises(Failed) as failed:
        flare_client.check_num_samples(10**6, 24, 2)
    assert failed.value.report == {"entry": "train", "round": 2, "category": "bad_num_samples"}
    assert "24 rows" in failed.value.record["message"]


def test_a_history_no_honest_run_reports_costs_an_infinite_epsilon_not_a_crash():
    assert epsilon_of([(1e300, 1.0, 10**12)], 1e-5) == float("inf")


def test_a_history_holding_an_integer_too_large_for_a_float_is_no_accounting():
    from caia_jupyter.site.dp_sgd import parse_history

    with pytest.raises(ContractError) as refused:
        parse_history([[10**400, 0.1, 3]])
    assert refused.value.failure == "not_private"

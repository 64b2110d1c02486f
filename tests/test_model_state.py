"""A model's state_dict travels faithfully, results accept what torch and numpy users return, and
an update with nothing to contribute (or not fit to be averaged) never changes the global model.

The rule (caia_jupyter.contracts.weights): weighted by num_samples; floating entries computed in float64
and back in their own dtype, integers exactly and rounded half to even, bools a weighted majority."""

import json
import random
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from caia_jupyter.aggregator.components import GLOBAL_MODEL, STATUS, CaiaFedAvg, save_arrays, unusable
from caia_jupyter.contracts import failures, tensors, weights
from caia_jupyter.contracts.errors import ContractError
from caia_jupyter.contracts.fsutil import write_json
from caia_jupyter.researcher.runs import Run, export_global_model
from caia_jupyter.site import runtime
from caia_jupyter.terminal import run_summary
from nvflare.app_common.abstract.fl_model import FLModel

CASES = Path(__file__).parent / "cases"
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64,
          torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


# -- the rule, entry by entry --------------------------------------------------------------------

def expected_entry(values: list[torch.Tensor], counts: list[int], dtype) -> torch.Tensor:
    """The documented rule, computed here independently of caia's code."""
    counts = [int(n) for n in counts]  # e.g. the 0-d tensors train returned
    total = sum(counts)
    if not dtype.is_floating_point:  # exact, in fractions; Python's round() rounds half to even
        exact = [sum(Fraction(int(x)) * n for x, n in zip(xs, counts)) / total
                 for xs in zip(*(v.flatten().tolist() for v in values))]
        rounded = [x >= Fraction(1, 2) if dtype == torch.bool else round(x) for x in exact]
        return torch.tensor(rounded, dtype=dtype).reshape(values[0].shape)
    stacked = torch.stack([v.double() for v in values])
    mean = sum(v.double() * (n / total) for v, n in zip(values, counts))
    mean = torch.minimum(torch.maximum(mean, stacked.min(0).values), stacked.max(0).values)
    if dtype == torch.float16:  # round to nearest from float64 at once
        return torch.from_numpy(mean.numpy().astype(np.float16))
    return mean.to(torch.float32).to(dtype) if dtype == torch.bfloat16 else mean.to(dtype)


def extremes(dtype) -> list:
    """The values at a dtype's limits."""
    if dtype.is_floating_point:
        big = torch.finfo(dtype).max
        return [big, -big, torch.finfo(dtype).tiny, 0.0]
    info = torch.iinfo(dtype)
    return [info.min, info.min + 1, info.max - 1, info.max]


def random_entry(rng: random.Random, dtype, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) < 0.5
    if rng.random() < 0.3:  # the dtype's limits, where a float64 detour overflows or wraps
        limits = torch.tensor(extremes(dtype), dtype=dtype)
        return limits[torch.randint(0, len(limits), shape, generator=generator)]
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator, dtype=torch.float64) * 10 ** rng.randint(-3, 3)).to(dtype)
    info = torch.iinfo(dtype)
    high = min(info.max, rng.choice([6, 1000, 2**40]))  # small values: many .5 ties
    low = max(info.min, -high)
    return torch.randint(low, high, shape, generator=generator, dtype=torch.int64).to(dtype)


def one_round(tmp_path: Path, initial: dict, updates: list[tuple[dict, int]]) -> dict:
    """What caia does with one round: the initial weights and their dtype map (as submit makes them),
    each site's state_dict converted at the site, averaged on the server, exported as global_model.pt."""
    dtypes = tensors.dtypes_of(initial)
    server = CaiaFedAvg(num_rounds=1, min_clients=2, output_dir=str(tmp_path))
    server._dtypes = dtypes
    results = [FLModel(params=tensors.to_arrays(state), meta={"client_name": f"site-{i + 1}", "NUM_STEPS_CURRENT_ROUND": n})
               for i, (state, n) in enumerate(updates)]
    save_arrays(server._average(results, 0, tensors.to_arrays(initial)), tmp_path / GLOBAL_MODEL)
    write_json(tmp_path / weights.DTYPES_FILE, dtypes)
    export_global_model(tmp_path)
    return torch.load(tmp_path / "global_model.pt", weights_only=True)


def test_for_random_state_dicts_of_mixed_dtypes_the_global_model_follows_the_rule_entry_by_entry(tmp_path):
    rng = random.Random(20261130)
    for example in range(80):
        entries = {f"layer{i}.{rng.choice(['weight', 'bias', 'buffer'])}": (rng.choice(DTYPES), tuple(rng.choices([1, 2, 3, 5], k=rng.randint(0, 3))))
                   for i in range(rng.randint(1, 8))}
        sites = [{name: random_entry(rng, dtype, shape) for name, (dtype, shape) in entries.items()} for _ in range(3)]
        counts = rng.choice([[1, 1], [3, 3], [rng.randint(1, 500), rng.randint(1, 500)],  # equal counts: ties
                             [rng.randint(1, weights.MAX_NUM_SAMPLES), weights.MAX_NUM_SAMPLES]])
        folder = tmp_path / str(example)
        folder.mkdir()
        global_model = one_round(folder, sites[0], list(zip(sites[1:], counts)))
        assert list(global_model) == list(entries)
        for name, (dtype, shape) in entries.items():
            expected = expected_entry([sites[1][name], sites[2][name]], counts, dtype)
            assert global_model[name].dtype == dtype and global_model[name].shape == shape, name
            assert torch.equal(global_model[name], expected), (example, name, global_model[name], expected)


@pytest.mark.parametrize("dtype", [d for d in DTYPES if d != torch.bool])
def test_values_at_a_dtypes_limits_stay_unchanged_and_their_mean_stays_in_range(tmp_path, dtype):
    (tmp_path / "same").mkdir(), (tmp_path / "mixed").mkdir()
    limits = torch.tensor(extremes(dtype), dtype=dtype)
    same = one_round(tmp_path / "same", {"x": limits}, [({"x": limits}, 7), ({"x": limits.clone()}, 5), ({"x": limits.clone()}, 11)])
    assert same["x"].dtype == dtype and torch.equal(same["x"], limits)
    low, high = torch.full((2,), limits.min().item(), dtype=dtype), torch.full((2,), limits.max().item(), dtype=dtype)
    mixed = one_round(tmp_path / "mixed", {"x": low}, [({"x": low}, 1), ({"x": high}, 1)])["x"]
    expected = round((Fraction(low[0].item()) + Fraction(high[0].item())) / 2) if not dtype.is_floating_point else 0.0
    assert mixed.tolist() == [expected, expected]


def test_an_integer_counter_stays_an_integer_and_the_model_loads_strictly(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4)).to(torch.bfloat16)
    one, two = model.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}
    one["1.num_batches_tracked"].fill_(2)
    two["1.num_batches_tracked"].fill_(3)
    global_model = one_round(tmp_path, model.state_dict(), [(one, 10), (two, 30)])
    assert global_model["1.num_batches_tracked"].dtype == torch.int64 and global_model["1.num_batches_tracked"].item() == 3
    assert global_model["0.weight"].dtype == torch.bfloat16
    model.load_state_dict(global_model, strict=True)


# -- what build_model() may hold ----------------------------------------------------------------

class WithExtraState(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def get_extra_state(self):
        return {"features": ["size", "density"]}

    def set_extra_state(self, state):
        pass


@pytest.mark.parametrize("state, named", [
    (lambda: WithExtraState().state_dict(), "'_extra_state' is a dict, not a tensor"),
    (lambda: {"w": torch.zeros(2), "c": torch.zeros(2, dtype=torch.complex64)}, "'c' is a complex64 tensor"),
    (lambda: {"s": torch.zeros(3, 3).to_sparse()}, "'s' is a quantized, sparse or meta tensor"),
    (lambda: {"q": torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8)}, "'q' is a quantized, sparse or meta tensor"),
    (lambda: {"f8": torch.zeros(2).to(torch.float8_e4m3fn)}, "'f8' is a float8_e4m3fn tensor"),
])
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_an_entry_caia_cannot_average_is_refused_in_one_line_naming_it(state, named):
    with pytest.raises(ContractError) as refused:
        tensors.dtypes_of(state())
    message = str(refused.value)
    assert named in message and "\n" not in message and message.endswith("keep anything else out of state_dict() (e.g. as a plain attribute)")
    assert (refused.value.failure, refused.value.entry) == ("unsupported_state", "build_model")


def test_initial_weights_of_a_state_dict_with_an_extra_state_are_refused_in_one_line_not_a_traceback(tmp_path):
    from caia_jupyter.researcher import compose
    from caia_jupyter.targets.job import initial_weights

    built = compose.build(copy_case("03-non-tensor-state-entry", tmp_path) / "extra_state_model.ipynb")
    with pytest.raises(ContractError, match=r"^the model's state_dict\(\) entry '_extra_state' is a dict, not a tensor;"):
        initial_weights(built, tmp_path / "initial_model.npz")
    assert not (tmp_path / "initial_model.npz").exists() and not (tmp_path / weights.DTYPES_FILE).exists()


# -- what train and evaluate may return -------------------------------------------------------------

def entry_points(trained: dict, evaluated: dict | None = None) -> runtime.EntryPoints:
    return runtime.EntryPoints(build_model=lambda: torch.nn.Linear(2, 2), load_data=lambda ctx: None,
                               train=lambda model, data, ctx: dict(trained),
                               evaluate=lambda model, data, ctx: dict(evaluated or {"accuracy": 0.5}))


@pytest.mark.parametrize("count", [24, np.int64(24), np.int32(24), np.array(24), torch.tensor(24), torch.tensor(24, dtype=torch.int32)])
def test_num_samples_is_any_integer_scalar_torch_and_numpy_users_return(count):
    model = torch.nn.Linear(2, 2)
    result = runtime.run_round(entry_points({"num_samples": count}), model, None, None)
    assert result.num_samples == 24 and type(result.num_samples) is int
    assert set(result.weights) == {"weight", "bias"} and result.weights["weight"].dtype == np.float32


@pytest.mark.parametrize("count, shown", [
    (24.0, "24.0"), (-1, "-1"), (True, "a bool"), ("24", "a str"), (torch.tensor(24.0), "24.0"),
    (torch.tensor([24]), "a Tensor of shape (1,) and dtype torch.int64"), (None, "a NoneType"),
    (2**53, "9007199254740992"), (np.int64(2**62), "4611686018427387904"), (torch.tensor(2**53), "9007199254740992"),
])
def test_num_samples_that_is_not_an_integer_count_is_refused_naming_train(count, shown):
    with pytest.raises(ContractError) as refused:
        runtime.run_round(entry_points({"num_samples": count}), torch.nn.Linear(2, 2), None, None)
    assert str(refused.value) == (f"train(model, data, ctx) returned num_samples = {shown}; it must be an integer from 0 to "
                                  "9007199254740991 (an int, a numpy integer or a 0-d integer tensor)")
    assert (refused.value.failure, refused.value.entry) == ("bad_num_samples", "train")


def test_the_site_and_the_server_accept_the_same_num_samples():
    model = torch.nn.Linear(2, 2)
    reference = tensors.to_arrays(model.state_dict())
    dtypes = tensors.dtypes_of(model.state_dict())
    largest = runtime.run_round(entry_points({"num_samples": weights.MAX_NUM_SAMPLES}), model, None, None)
    assert unusable(largest.weights, largest.num_samples, reference, dtypes) is None
    with pytest.raises(ContractError):
        runtime.run_round(entry_points({"num_samples": weights.MAX_NUM_SAMPLES + 1}), model, None, None)
    assert unusable(largest.weights, weights.MAX_NUM_SAMPLES + 1, reference, dtypes) == "malformed_update"


def test_metrics_are_any_real_scalar_torch_and_numpy_users_return():
    returned = {"a": 1, "b": 0.5, "c": np.float32(0.25), "d": np.int64(3), "e": np.array(0.125), "f": torch.tensor(0.75),
                "g": torch.tensor(2, dtype=torch.int16), "h": torch.tensor(0.5, requires_grad=True) * 1}
    metrics = runtime._metrics(returned, "evaluate")
    assert metrics == {"a": 1.0, "b": 0.5, "c": 0.25, "d": 3.0, "e": 0.125, "f": 0.75, "g": 2.0, "h": 0.5}
    assert all(type(v) is float for v in metrics.values())


@pytest.mark.parametrize("value, shown", [
    ([0.5], "a list"), ("0.5", "a str"), (True, "a bool"), (np.bool_(True), "a bool"), (1j, "a complex"),
    (torch.tensor([0.1, 0.2]), "a Tensor of shape (2,) and dtype torch.float32"), (torch.tensor(True), "a Tensor of shape () and dtype torch.bool"),
    (np.array([1.0]), "a ndarray of shape (1,) and dtype float64"),
])
def test_a_metric_that_is_not_a_number_is_refused_naming_the_entry_point_and_the_metric(value, shown):
    with pytest.raises(ContractError) as refused:
        runtime._metrics({"val_loss": value}, "evaluate")
    assert str(refused.value) == (f"evaluate(model, data, ctx) returned metric 'val_loss' = {shown}; a metric must be a "
                                  "number: an int, a float, a numpy scalar or a 0-d tensor")
    assert (refused.value.failure, refused.value.entry) == ("bad_metrics", "evaluate")


def test_a_non_finite_metric_leaves_the_site_as_it_is_and_the_receiver_records_it_missing():
    metrics = runtime._metrics({"loss": float("nan"), "big": 10**400, "acc": torch.tensor(float("inf"))}, "train")
    assert np.isnan(metrics["loss"]) and metrics["big"] == metrics["acc"] == float("inf")


# -- the server: untrusted updates -----------------------------------------------------------------

def server_round(tmp_path, updates: list[tuple[str, dict, object]], initial: dict, dtypes: dict | None = None,
                 kind: str | None = None) -> tuple[dict, dict]:
    """One round of CaiaFedAvg on fake site results (site, params, num_samples); `kind` "DIFF": weight differences."""
    server = CaiaFedAvg(num_rounds=1, min_clients=1, output_dir=str(tmp_path), updates="weight_diff" if kind == "DIFF" else None)
    server._dtypes = dtypes or {k: v.dtype.name for k, v in initial.items()}
    results = [FLModel(params=params, params_type=kind, meta={"client_name": site, "NUM_STEPS_CURRENT_ROUND": n})
               for site, params, n in updates]
    params = server._average(results, 0, initial)
    server._status("training", 1, [site for site, _, _ in updates])
    return params, json.loads((tmp_path / STATUS).read_text())


INITIAL = {"w": np.zeros((2, 2), np.float32), "n": np.array(0)}
GOOD = {"w": np.ones((2, 2), np.float32), "n": np.array(4)}


@pytest.mark.parametrize("bad, count, reason", [
    ({"w": np.full((2, 2), np.nan, np.float32), "n": np.array(4)}, 10, "non_finite_weights"),
    ({"w": np.array([[1, np.inf], [1, 1]], np.float32), "n": np.array(4)}, 10, "non_finite_weights"),
    ({"w": np.full((2, 2), np.nan, np.float32), "n": np.array(4)}, 0, "no_examples"),
    (GOOD, 0, "no_examples"),
    ({"w": np.ones((3, 2), np.float32), "n": np.array(4)}, 10, "malformed_update"),
    ({"w": np.ones((2, 2), np.float32), "n": np.array(4), "x": np.array(1)}, 10, "malformed_update"),
    ({"w": np.array([["a", "b"], ["c", "d"]]), "n": np.array(4)}, 10, "malformed_update"),
    (GOOD, -3, "malformed_update"), (GOOD, 2.5, "malformed_update"), (GOOD, True, "malformed_update"), (GOOD, None, "malformed_update"),
    (GOOD, 2**53, "malformed_update"),
    # finite, but not in the entry's dtype: float64 1e300 for a float32 entry, floats or int32 for an int64 entry
    ({"w": np.full((2, 2), 1e300), "n": np.array(4)}, 10, "malformed_update"),
    ({"w": np.ones((2, 2), np.float32), "n": np.array(1e30)}, 10, "malformed_update"),
    ({"w": np.ones((2, 2), np.float32), "n": np.array(4, np.int32)}, 10, "malformed_update"),
    ({"w": np.ones((2, 2), np.float32), "n": np.array(4, ">i8")}, 10, "malformed_update"),
])
def test_an_update_unfit_to_average_is_left_out_of_that_round_and_the_status_says_why(tmp_path, bad, count, reason):
    params, status = server_round(tmp_path, [("site-1", GOOD, 3), ("site-2", bad, count)], INITIAL)
    assert np.array_equal(params["w"], GOOD["w"]) and params["n"] == 4 and params["n"].dtype == np.int64
    assert status["excluded"] == [{"site": "site-2", "round": 0, "reason": reason}]


def test_an_entry_a_sites_privacy_filter_removed_takes_no_part_in_that_entrys_average(tmp_path):
    partial = {"w": np.full((2, 2), 3, np.float32)}  # "n" removed at the site (e.g. NVFLARE's ExcludeVars)
    params, status = server_round(tmp_path, [("site-1", GOOD, 3), ("site-2", partial, 1)], INITIAL)
    assert np.array_equal(params["w"], np.full((2, 2), 1.5, np.float32)) and params["n"] == 4 and status["excluded"] == []
    params, _ = server_round(tmp_path, [("site-2", partial, 1)], INITIAL)
    assert params["n"] == INITIAL["n"] and params["n"].dtype == np.int64  # no site sent it: the global value stays


def test_weight_differences_are_averaged_and_added_to_the_global_model(tmp_path):
    start = {"w": np.full((2, 2), 10, np.float32), "n": np.array(2**63 - 2), "b": np.array([250, 5], np.uint8)}
    one = {"w": np.full((2, 2), 1, np.float32), "n": np.array(1), "b": np.array([10, 0], np.uint8)}  # 260 wraps: 4
    three = {"w": np.full((2, 2), -1, np.float32), "n": np.array(1), "b": np.array([0, 255], np.uint8)}  # 5 - 1
    params, status = server_round(tmp_path, [("site-1", one, 1), ("site-2", three, 3)], start, kind="DIFF")
    assert status["excluded"] == []
    assert np.array_equal(params["w"], np.full((2, 2), 10 + (1 - 3) / 4, np.float32))
    # integers: each site's value is exactly global + difference (wrapped as numpy wraps), then averaged by the rule
    assert params["n"] == 2**63 - 1 and params["b"].tolist() == [round((1 * 4 + 3 * 250) / 4), 4]


def test_a_site_sending_full_weights_where_differences_are_due_is_left_out(tmp_path):
    params, status = server_round(tmp_path, [("site-1", GOOD, 3)], INITIAL, kind="DIFF")
    assert params is not INITIAL and np.array_equal(params["w"], GOOD["w"])  # the differences, added to zeros
    server = CaiaFedAvg(num_rounds=1, min_clients=1, output_dir=str(tmp_path), updates="weight_diff")
    server._dtypes = {k: v.dtype.name for k, v in INITIAL.items()}
    full = [FLModel(params=GOOD, meta={"client_name": "site-1", "NUM_STEPS_CURRENT_ROUND": 3})]
    assert server._average(full, 0, INITIAL) is INITIAL
    assert server._excluded == [{"site": "site-1", "round": 0, "reason": "malformed_update"}]


def test_a_bfloat16_entry_beyond_bfloat16s_range_is_not_finite_and_left_out(tmp_path):
    initial = {"w": np.zeros(2, np.float32)}  # a bfloat16 entry travels as float32
    largest = float(torch.finfo(torch.bfloat16).max)
    beyond = {"w": np.array([np.finfo(np.float32).max, 0], np.float32)}  # finite in float32, inf in bfloat16
    at_limit = {"w": np.array([largest, -largest], np.float32)}
    params, status = server_round(tmp_path, [("site-1", at_limit, 3), ("site-2", beyond, 4)], initial, {"w": "bfloat16"})
    assert status["excluded"] == [{"site": "site-2", "round": 0, "reason": "non_finite_weights"}]
    assert torch.tensor(params["w"]).to(torch.bfloat16).tolist() == [largest, -largest]


def test_with_no_usable_update_the_global_model_stays_as_it_was(tmp_path):
    nan = {"w": np.full((2, 2), np.nan, np.float32), "n": np.array(1)}
    params, status = server_round(tmp_path, [("site-1", nan, 0), ("site-2", nan, 5)], INITIAL)
    assert params is INITIAL
    assert [e["reason"] for e in status["excluded"]] == ["no_examples", "non_finite_weights"]


def test_the_run_names_each_left_out_update_and_each_missing_metric_and_nothing_forged(tmp_path):
    write_json(tmp_path / "run.json", {"target": "simulator", "rounds": 1, "sites": {"site-1": "a", "site-3": "b"}})
    write_json(tmp_path / STATUS, {"phase": "training", "rounds_done": 1, "rounds": 1, "excluded": [
        {"site": "site-3", "round": 0, "reason": "no_examples"},
        {"site": "site-3", "round": 1, "reason": "PHI-97.25"}, {"site": "site-9", "round": 0, "reason": "no_examples"},
        {"site": "site-1", "round": "0", "reason": "non_finite_weights"}, "site-1"]})
    records = [{"site": "site-1", "round": 1, "name": "accuracy", "value": 0.75, "time": 1.0},
               {"site": "site-3", "round": 1, "name": "accuracy", "value": None, "time": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = Run(tmp_path)
    assert run.notes == [
        "site-3's update of round 0 was left out of the average: it trained on no examples (num_samples 0: no rows, "
        "or none left after load_data)",
        "site-3's accuracy at round 1 was not a finite number; it is recorded as missing",
    ]
    assert run.final_metrics() == {"sites": {"site-1": {"accuracy": 0.75}}, "global": {"accuracy": 0.75}}
    shown = run_summary(run)
    assert [line for line in shown.text.splitlines() if "note:" in line] == [f"  note: {note}" for note in run.notes]
    assert shown.data["notes"] == run.notes
    assert set(failures.EXCLUDED) == {"no_examples", "non_finite_weights", "malformed_update", "alone_encrypted"}


# -- the cases, on NVFLARE's simulator ----------------------------------------------------------------

def copy_case(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(CASES / name, tmp_path / name, ignore=shutil.ignore_patterns("bundles", "runs")))


def case_sites(root: Path, csvs: dict[str, Path]):
    from caia_jupyter.site import sites
    from caia_jupyter.targets.demo_sites import add_reviewer
    from conftest import reviewer_key

    made = {}
    for name, csv in csvs.items():
        site = sites.init(root / "sites" / name, name)
        sites.add_dataset(site, "tumours", csv)
        add_reviewer(site, reviewer_key(site))
        made[name] = site
    return made


def run_case(case: Path, notebook: str, csvs: dict[str, Path], tmp_path: Path):
    """Bundle, validate, approve at a site per CSV of `csvs` and run `notebook` of `case` on the
    simulator: (bundle, finished run, its global model as a torch state dict)."""
    from caia_jupyter.researcher import compose, validation
    from caia_jupyter.targets.submit import submit
    from conftest import approve

    built = compose.build(case / notebook)
    assert validation.validate(built).passed
    made = case_sites(tmp_path, csvs)
    for site in made.values():
        approve(site, built.id, {"tumours": "tumours"})
    run = submit(built.path, [s.path for s in made.values()], runs_root=tmp_path / "runs")
    assert run.wait(timeout=300) == "finished", run.message
    return built, run, torch.load(run.global_model, weights_only=True)


def local_fedavg(built, csvs: dict[str, Path], rounds: int) -> dict:
    """FedAvg by the documented rule, computed here with the bundle's own functions on the sites' files."""
    from caia_jupyter.site.context import Context

    entry = runtime.load_entry_points(built.path)
    columns = built.manifest["datasets"]["tumours"]["columns"]
    state = entry.build_model().state_dict()
    for round in range(rounds):
        updates = []
        for site, csv in csvs.items():
            model = entry.build_model()
            model.load_state_dict(state)
            ctx = Context(site, built.manifest["job"]["params"], {"tumours": {"path": str(csv), "columns": columns}}, rounds, round)
            data = entry.load_data(ctx)
            count = entry.train(model, data, ctx)["num_samples"]
            if count:
                updates.append(({k: v.clone() for k, v in model.state_dict().items()}, count))
        state = {k: expected_entry([u[k] for u, _ in updates], [n for _, n in updates], v.dtype) for k, v in state.items()}
    return state


@pytest.mark.slow
def test_case_01_batchnorm_keeps_its_integer_counter_and_dtypes_and_averages_running_stats(tmp_path):
    case = copy_case("01-batchnorm-integer-buffer", tmp_path)
    csvs = {name: case / "site_data" / f"{name}.csv" for name in ("site-1", "site-2")}
    built, run, state = run_case(case, "bn_model.ipynb", csvs, tmp_path)
    model = runtime.load_entry_points(built.path).build_model()
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in model.state_dict().items()}
    assert state["1.num_batches_tracked"].dtype == torch.int64 and state["1.num_batches_tracked"].item() == 2
    model.load_state_dict(state, strict=True)
    expected = local_fedavg(built, csvs, rounds=2)  # site-1: 24 rows, site-2: 40 rows
    for name, value in expected.items():
        assert torch.allclose(state[name].double(), value.double(), atol=1e-6), name
    assert run.notes == []


@pytest.mark.slow
def test_case_04_a_site_whose_rows_are_all_filtered_out_is_named_and_never_changes_the_average(tmp_path):
    case = copy_case("04-site-with-no-usable-rows", tmp_path)
    csvs = {name: case / "site_data" / f"{name}.csv" for name in ("site-1", "site-3")}
    built, run, state = run_case(case, "eligibility_filter.ipynb", csvs, tmp_path)
    assert all(torch.isfinite(v).all() for v in state.values())
    expected = local_fedavg(built, {"site-1": csvs["site-1"]}, rounds=2)  # site-3 contributes nothing
    assert all(torch.allclose(state[k], expected[k], atol=1e-6) for k in expected)
    no_examples = failures.EXCLUDED["no_examples"]
    notes = run.notes
    assert [n for n in notes if "left out" in n] == [f"site-3's update of round {r} was left out of the average: {no_examples}"
                                                     for r in (0, 1)]
    assert "site-3's accuracy at round 0 was not a finite number; it is recorded as missing" in notes
    assert run.sites == {"site-1": "done", "site-3": "done"}
    assert set(run.final_metrics()["sites"]) == {"site-1"}  # site-3's accuracy on no rows is missing, not NaN
    assert not run.table("accuracy")["site-1"].isna().any()


MIXED = '''%%federated dataset=tumours:samples/tumours.csv rounds=2 min_clients=2 param.lr=0.1
import torch
from torch import nn

class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.head = nn.Linear(8, 2).to(torch.float64)
        self.scale = nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
        self.register_buffer("seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False]))
        self.register_buffer("ema", torch.zeros(2, dtype=torch.float16))

    def forward(self, x):
        return self.head(self.body(x).double()).float() * self.scale.float()

def build_model():
    torch.manual_seed(0)
    return Mixed()

def load_data(ctx):
    table = ctx.dataset("tumours")
    features = torch.tensor(table[["size", "density"]].to_numpy(), dtype=torch.float32)
    labels = torch.tensor(table["malignant"].to_numpy(), dtype=torch.long)
    return features, labels

def train(model, data, ctx):
    features, labels = data
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"])
    loss = nn.functional.cross_entropy(model(features), labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        model.seen += len(features)
        model.mask.copy_(torch.tensor([len(features) > 30, True]))
        model.ema.copy_(torch.tensor([loss.item(), 1.0]).half())
    return {"num_samples": torch.tensor(len(features)), "train_loss": loss.detach()}

def evaluate(model, data, ctx):
    features, labels = data
    model.eval()
    with torch.no_grad():
        return {"accuracy": (model(features).argmax(1) == labels).float().mean()}
'''


@pytest.mark.slow
def test_a_mixed_dtype_model_with_tensor_results_comes_back_in_its_own_dtypes(tmp_path):
    import nbformat

    case = copy_case("01-batchnorm-integer-buffer", tmp_path)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%load_ext caia_jupyter"), nbformat.v4.new_code_cell(MIXED)]
    nbformat.write(nb, case / "mixed.ipynb")
    csvs = {name: case / "site_data" / f"{name}.csv" for name in ("site-1", "site-2")}
    built, run, state = run_case(case, "mixed.ipynb", csvs, tmp_path)
    model = runtime.load_entry_points(built.path).build_model()
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in model.state_dict().items()}
    assert {state["scale"].dtype, state["head.weight"].dtype, state["ema"].dtype} == {torch.bfloat16, torch.float64, torch.float16}
    # seen: each site adds its rows every round from the global count: round 0 -> 24 and 40, mean (24*24 + 40*40)/64 = 34
    assert state["seen"].dtype == torch.int64 and state["seen"].item() == 34 + 34  # round 1: 58 and 74 -> 68
    assert state["mask"].tolist() == [True, True]  # site-2 (40 of 64 samples) says True: a weighted majority
    model.load_state_dict(state, strict=True)
    expected = local_fedavg(built, csvs, rounds=2)
    for name, value in expected.items():
        assert torch.allclose(state[name].double(), value.double(), atol=1e-2 if value.dtype in (torch.float16, torch.bfloat16) else 1e-6), name
    frame = run.metrics()
    assert {"accuracy", "train_loss", "num_samples"} <= set(frame["name"]) and frame["value"].notna().all()


@pytest.mark.slow
def test_case_03_validation_refuses_a_non_tensor_state_entry_in_one_line_naming_it_and_submit_never_starts(tmp_path, caia):
    case = copy_case("03-non-tensor-state-entry", tmp_path)
    code, out, err = caia("validate", case / "extra_state_model.ipynb")
    assert code == 1
    where, _, summary = out.splitlines()[0].partition(", in build_model: ")
    assert where == "validation FAILED: federated cell 1 (notebook cell 3: 'import torch') line 23"  # def build_model
    assert summary == ("ContractError: the model's state_dict() entry '_extra_state' is a dict, not a tensor; caia averages "
                       "tensors of float16, bfloat16, float32, float64, uint8, int8, int16, int32, int64, bool only: keep "
                       "anything else out of state_dict() (e.g. as a plain attribute)")
    assert "Traceback" not in out + err
    code, out, err = caia("submit", case / "bundles" / "extra_state_model", "--sites", tmp_path, "--runs", tmp_path / "runs")
    assert code == 2 and "failed validation" in err and "Traceback" not in out + err and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_validation_names_the_cell_and_the_metric_a_train_returns_that_is_not_a_number(write_notebook, caia):
    from conftest import set_source

    path = write_notebook("good", edit=lambda nb: set_source(nb, '"train_loss": loss.item()', '"train_loss": [loss.item()]'))
    code, out, _ = caia("validate", path)
    assert code == 1
    assert out.splitlines()[0] == (
        "validation FAILED: federated cell 4 (notebook cell 8: 'def train(model, data, ctx):') line 2, in train: "
        "ContractError: train(model, data, ctx) returned metric 'train_loss' = a list; a metric must be a number: "
        "an int, a float, a numpy scalar or a 0-d tensor")

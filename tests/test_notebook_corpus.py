"""A corpus of notebooks as researchers write them, each a different model family or data shape,
taken the whole way: bundle, validate (papermill, real kernel), approve at two sites, run on
NVFLARE's simulator. Then the global model must load into `build_model()` exactly (same keys,
same dtypes, strict) and every metric must arrive for every site and round, finite and sensible.

The notebooks live in tests/notebooks/; their data is synthetic, made here with numpy from fixed
seeds: a sample for validation (seed 0) and one export per site (seeds 1, 2).
"""

from __future__ import annotations

import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from caia_jupyter.contracts.fileset import MODULE
from caia_jupyter.researcher import compose, validation
from caia_jupyter.researcher.runs import FINAL
from caia_jupyter.site import runtime, sites
from caia_jupyter.targets.demo_sites import add_reviewer
from caia_jupyter.targets.submit import submit
from conftest import approve, reviewer_key

NOTEBOOKS = Path(__file__).parent / "notebooks"
SITES = ("site-1", "site-2")
SAMPLE_ROWS, SITE_ROWS = 48, 120
POSITIVE = (0.0, math.inf)
FRACTION = (0.0, 1.0)


# -- synthetic data: name -> (rng, rows) -> {dataset: DataFrame} -------------------------------

def clinic(rng, n):
    frame = pd.DataFrame({"age": rng.normal(55, 12, n), "bmi": rng.normal(28, 5, n),
                          "systolic": rng.normal(130, 15, n), "glucose": rng.normal(100, 20, n)}).round(1)
    logit = (1.2 * (frame.age - 55) / 12 + 0.8 * (frame.bmi - 28) / 5 + 0.3 * (frame.systolic - 130) / 15
             + 2.0 * (frame.glucose - 100) / 20)
    frame["diabetic"] = (logit + rng.logistic(size=n) > 0).astype(int)
    return {"clinic": frame}


def scans(rng, n):
    images = rng.normal(0, 0.25, (n, 8, 8))
    pattern = rng.integers(0, 3, n)
    for image, kind, at in zip(images, pattern, rng.integers(1, 7, n)):
        if kind == 0:
            image[at, :] += 1
        elif kind == 1:
            image[:, at] += 1
        else:
            image += np.eye(8, k=int(at) - 4)
    frame = pd.DataFrame(images.reshape(n, 64).round(2), columns=[f"p{i:02d}" for i in range(64)])
    frame["pattern"] = pattern
    return {"scans": frame}


def vitals(rng, n):
    frame = pd.DataFrame({"heart_rate": rng.normal(90, 15, n), "temperature": rng.normal(37.5, 0.8, n),
                          "resp_rate": rng.normal(18, 4, n), "lactate": rng.lognormal(0.5, 0.5, n),
                          "wbc": rng.normal(10, 3, n), "map": rng.normal(80, 12, n)}).round(2)
    logit = ((frame.heart_rate - 90) / 15 + (frame.temperature - 37.5) / 0.8 + 1.5 * (frame.lactate - 1.9)
             - (frame["map"] - 80) / 12)
    frame["sepsis"] = (logit + rng.logistic(size=n) * 0.5 > 0).astype(int)
    return {"vitals": frame}


def stays(rng, n):
    frame = pd.DataFrame({"age": rng.normal(65, 15, n).round(0), "severity": rng.integers(1, 6, n),
                          "comorbidities": rng.poisson(2, n), "creatinine": rng.lognormal(0, 0.4, n).round(2)})
    days = (2 + 0.05 * (frame.age - 65) + 1.2 * frame.severity + 0.6 * frame.comorbidities
            + 1.5 * np.log(frame.creatinine) + rng.normal(0, 1, n))
    frame["days"] = days.round(1)
    return {"stays": frame}


def followup(rng, n):
    frame = pd.DataFrame({"age": rng.normal(60, 10, n).round(0), "stage": rng.integers(1, 4, n),
                          "marker": rng.normal(0, 1, n).round(3)})
    hazard = np.exp(0.5 * (frame.age - 60) / 10 + 0.8 * (frame.stage - 2) + 0.9 * frame.marker)
    relapse, last_visit = rng.exponential(365 / hazard), rng.uniform(100, 1500, n)
    frame["time"] = np.minimum(relapse, last_visit).round(1)
    frame["event"] = (relapse <= last_visit).astype(int)
    return {"followup": frame}


RHYTHMS = np.array([[1.5, -1.0, 0.0], [0.0, 1.5, -1.0], [-1.0, 0.0, 1.5], [0.5, 0.5, -0.5], [0.0, -0.5, 0.5]])


def wearables(rng, n):
    x = rng.normal(0, 1, (n, 5))
    frame = pd.DataFrame(x.round(3), columns=["rr_mean", "rr_std", "qrs", "qt", "p_wave"])
    frame["rhythm"] = np.argmax(x @ RHYTHMS + rng.normal(0, 0.5, (n, 3)), axis=1)
    return {"wearables": frame}


def admissions(rng, n):
    ward = rng.choice(["cardiology", "neurology", "orthopaedics", "icu"], n, p=[0.35, 0.25, 0.25, 0.15]).astype(object)
    ward[rng.random(n) < 0.1] = None
    age = rng.normal(65, 15, n).round(0)
    age[rng.random(n) < 0.1] = np.nan
    admitted = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    stay = rng.geometric(0.2, n)
    discharged = pd.Series(admitted + pd.to_timedelta(stay, unit="D")).dt.strftime("%Y-%m-%d")
    discharged[rng.random(n) < 0.05] = None  # still in hospital
    logit = 3 * (np.log1p(stay) - 1.7) + 2 * (ward == "cardiology") - 0.7 + 0.05 * (np.nan_to_num(age, nan=65) - 65)
    return {"admissions": pd.DataFrame({
        "ward": ward, "age": age, "admitted": pd.Series(admitted).dt.strftime("%Y-%m-%d"), "discharged": discharged,
        "readmitted": (logit + rng.logistic(size=n) * 0.5 > 0).astype(int)})}


def patients_and_labs(rng, n):
    patients = pd.DataFrame({"patient_id": 1000 + np.arange(n), "age": rng.normal(60, 15, n).round(0),
                             "sex": rng.choice(["F", "M"], n)})
    tested = np.sort(rng.choice(n, int(n * 0.85), replace=False))  # some patients have no labs
    labs = pd.DataFrame({"patient_id": patients.patient_id[tested].to_numpy(),
                         "creatinine": rng.lognormal(0, 0.4, len(tested)).round(2),
                         "hemoglobin": rng.normal(13, 2, len(tested)).round(1)})
    logit = 2.5 * np.log(labs.creatinine) - 0.6 * (labs.hemoglobin - 13) / 2 + (patients.age[tested].to_numpy() - 60) / 15
    labs["ckd_progression"] = (logit + rng.logistic(size=len(tested)) * 0.5 > 0).astype(int)
    return {"patients": patients, "labs": labs.sample(frac=1, random_state=int(rng.integers(1 << 30)))}


# -- what each notebook must show -----------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    data: Callable[[np.random.Generator, int], dict[str, pd.DataFrame]]
    evaluate: dict  # metric -> (low, high), every round and the final model
    train: dict  # metric -> (low, high), every training round
    better: tuple  # (metric, floor): the final model scores higher than the initial one, and at least floor
    integers: dict = field(default_factory=dict)  # integer buffer -> its value in the global model
    exact: dict = field(default_factory=dict)  # metric -> round -> its value at every site


CORPUS = {
    "logistic_regression": Expect(clinic, {"accuracy": FRACTION, "loss": POSITIVE}, {"train_loss": POSITIVE},
                                  ("accuracy", 0.75)),
    "cnn_pixels": Expect(scans, {"accuracy": FRACTION, "loss": POSITIVE}, {"train_loss": POSITIVE},
                         ("accuracy", 0.9)),
    # both sites train 96 rows in batches of 32 for 2 epochs: 6 batches a round, 18 after 3 rounds
    "batchnorm_dropout": Expect(vitals, {"accuracy": FRACTION}, {"train_loss": POSITIVE}, ("accuracy", 0.7),
                                integers={"1.num_batches_tracked": 18}),
    "regression_mse": Expect(stays, {"rmse": POSITIVE, "r2": (-math.inf, 1.0)}, {"train_mse": POSITIVE},
                             ("r2", 0.5)),
    "cox_survival": Expect(followup, {"c_index": FRACTION, "neg_log_likelihood": POSITIVE}, {"train_loss": POSITIVE},
                           ("c_index", 0.65)),
    "dataloader_scheduler": Expect(wearables, {"accuracy": FRACTION}, {"train_loss": POSITIVE, "lr": (0.0, 0.05)},
                                   ("accuracy", 0.7), exact={"lr": lambda r: 0.05 * 0.8 ** (3 * (r + 1))}),
    "categorical_missing_dates": Expect(admissions, {"accuracy": FRACTION, "readmission_rate": FRACTION},
                                        {"train_loss": POSITIVE}, ("accuracy", 0.75)),
    "joined_datasets": Expect(patients_and_labs, {"accuracy": FRACTION, "loss": POSITIVE}, {"train_loss": POSITIVE},
                              ("accuracy", 0.7)),
}


def write_notebook(name: str, folder: Path) -> Path:
    """Copy notebook `name` into `folder` beside its synthetic samples (samples/<dataset>.csv)."""
    (folder / "samples").mkdir(parents=True)
    for dataset, frame in CORPUS[name].data(np.random.default_rng(0), SAMPLE_ROWS).items():
        frame.to_csv(folder / "samples" / f"{dataset}.csv", index=False)
    return Path(shutil.copy(NOTEBOOKS / f"{name}.ipynb", folder))


def make_site(root: Path, name: str, tables: dict[str, pd.DataFrame]) -> sites.Site:
    """A site holding `tables` as registered CSV datasets, trusting one reviewer (conftest.reviewer_key)."""
    site = sites.init(root / name, name)
    for dataset, frame in tables.items():
        frame.to_csv(root / name / f"{dataset}.csv", index=False)
        sites.add_dataset(site, dataset, root / name / f"{dataset}.csv")
    add_reviewer(site, reviewer_key(site))
    return site


def test_the_corpus_is_the_stored_notebooks_and_each_bundles_with_its_samples(tmp_path):
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CORPUS) and len(CORPUS) >= 6
    ids = set()
    for name in CORPUS:
        nbformat.validate(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4))
        composed = compose.compose(write_notebook(name, tmp_path / name))
        ids.add(composed.id)
        assert set(composed.manifest["datasets"]) == set(CORPUS[name].data(np.random.default_rng(0), 4)), name
    assert len(ids) == len(CORPUS)


def start(name: str, folder: Path):
    """Bundle and validate notebook `name`, approve it at two sites, submit it; returns (bundle, run)."""
    expect = CORPUS[name]
    built = compose.build(write_notebook(name, folder / "notebook"))
    checked = validation.validate(built)
    assert checked.passed, checked.error
    made = []
    for seed, site_name in enumerate(SITES, start=1):
        tables = expect.data(np.random.default_rng(seed), SITE_ROWS)
        made.append(make_site(folder / "sites", site_name, tables))
        approve(made[-1], built.id, {dataset: dataset for dataset in tables})
    return built, submit(built.path, [site.path for site in made], runs_root=folder / "runs")


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Every corpus notebook started, one after another in one worker thread (two validation
    kernels at once in one process mix up their messages): name -> a future of (bundle, run).
    A simulator run mostly waits, so the runs overlap and take a fraction of the time in turn."""
    root = tmp_path_factory.mktemp("corpus")
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = {name: pool.submit(start, name, root / name) for name in sorted(CORPUS)}
        yield futures
        for future in futures.values():  # stop what a failed assertion left running
            if not future.exception() and future.result()[1].status not in FINAL:
                future.result()[1].abort()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_notebook_runs_from_bundle_to_a_faithful_global_model_and_sensible_metrics(name, started):
    built, run = started[name].result()
    assert run.wait(timeout=300) == "finished", run.message
    assert run.sites == {site: "done" for site in SITES}
    check_global_model(built, run, CORPUS[name])
    check_metrics(run.metrics(), built.manifest["job"]["rounds"], CORPUS[name])


def check_global_model(built, run, expect: Expect) -> None:
    """global_model.pt holds what `build_model().state_dict()` holds: same keys in order, dtypes
    and shapes, finite floats, the expected integer buffers; and it loads with strict=True."""
    model = runtime.build_model(runtime.load_entry_points(built.path, built.manifest["files"][MODULE]["sha256"]))
    wanted = model.state_dict()
    state = torch.load(run.global_model, weights_only=True)
    assert list(state) == list(wanted)
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in wanted.items()}
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in wanted.items()}
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert {k: state[k].item() for k in expect.integers} == expect.integers
    model.load_state_dict(state, strict=True)


def check_metrics(frame: pd.DataFrame, rounds: int, expect: Expect) -> None:
    """Every expected metric at every site: each round once, finite and in range; num_samples a
    whole number every training round; the final model better than the initial one."""
    for site in SITES:
        mine = frame[frame["site"] == site]
        curve = lambda metric: mine[mine["name"] == metric].sort_values("round")
        for metrics, count in ((expect.evaluate, rounds + 1), (expect.train, rounds)):
            for metric, (low, high) in metrics.items():
                rows = curve(metric)
                assert list(rows["round"]) == list(range(count)), (site, metric)
                values = rows["value"].to_numpy()
                assert (np.isfinite(values) & (low <= values) & (values <= high)).all(), (site, metric, values)
        for metric, value_at in expect.exact.items():
            rows = curve(metric)
            assert list(rows["value"]) == pytest.approx([value_at(r) for r in rows["round"]], rel=1e-9), (site, metric)
        trained = curve("num_samples")["value"]
        assert len(trained) == rounds and all(v >= 1 and v == int(v) for v in trained), (site, list(trained))
        metric, floor = expect.better
        values = curve(metric)["value"].to_numpy()
        assert values[-1] > values[0] and values[-1] >= floor, (site, metric, list(values))

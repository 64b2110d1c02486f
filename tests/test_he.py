"""Encrypted aggregation, the parts that need no running NVFLARE: the client config variant a
manifest names, the one-line refusals (simulator, a POC without HE contexts, TenSEAL missing), and
the site's reading of a decrypted global model. The run itself: test_he_poc.py."""

import json

import numpy as np
import pytest

from caia_jupyter.contracts import client_app
from caia_jupyter.contracts.client_app import CLIENT_CONFIG, client_config
from caia_jupyter.contracts.errors import CaiaError, ContractError
from caia_jupyter.contracts.fileset import content_problems
from caia_jupyter.researcher import bundle as bundles
from caia_jupyter.site.flare_client import in_clear
from caia_jupyter.targets import poc as pocs
from caia_jupyter.targets.submit import submit
from conftest import build_validated, set_source

HE = "he-ckks"


def encrypted(nb):
    set_source(nb, "min_clients=1", "min_clients=1 encryption=he")


@pytest.fixture(scope="module")
def he_bundle(tmp_path_factory):
    return build_validated(tmp_path_factory.mktemp("he") / "nb", edit=encrypted)


def test_the_encrypted_variant_holds_nvflares_he_filters_and_the_clear_one_none():
    config = json.loads(client_config(encryption=HE))
    assert [f["path"] for chain in config["task_data_filters"] for f in chain["filters"]] == \
        ["nvflare.app_opt.he.model_decryptor.HEModelDecryptor"]
    assert [(f["path"], chain["tasks"]) for chain in config["task_result_filters"] for f in chain["filters"]] == \
        [("nvflare.app_opt.he.model_encryptor.HEModelEncryptor", ["train"])]
    clear = json.loads(client_config())
    assert clear["task_data_filters"] == [] and clear["task_result_filters"] == []


def test_the_guard_accepts_exactly_the_config_of_the_variant_the_manifest_names():
    assert content_problems(CLIENT_CONFIG, client_config(encryption=HE), job={"encryption": HE}) == []
    assert content_problems(CLIENT_CONFIG, client_config()) == []
    # a bundle asking for encryption whose config would send its update in clear, and the reverse
    assert content_problems(CLIENT_CONFIG, client_config(), job={"encryption": HE}) == [
        f"{CLIENT_CONFIG} is not caia's NVFLARE client config with encryption he-ckks of this version (caia runs the "
        "code in-process, never a command); rebuild the bundle with this caia-jupyter and NVFLARE"]
    assert content_problems(CLIENT_CONFIG, client_config(encryption=HE))[0].startswith(
        f"{CLIENT_CONFIG} is not caia's NVFLARE client config of this version")


def test_an_encrypted_bundle_carries_the_encrypted_variant_and_verifies(he_bundle):
    assert he_bundle.manifest["job"]["encryption"] == HE
    assert he_bundle.source(CLIENT_CONFIG).encode() == client_config(encryption=HE)
    assert bundles.verify(he_bundle.path) == (he_bundle.id, [])


def test_the_simulator_refuses_an_encrypted_bundle_in_one_line(he_bundle, tmp_path):
    site = tmp_path / "site-1"
    from caia_jupyter.site.sites import init

    init(site, "site-1")
    with pytest.raises(CaiaError) as refused:
        submit(he_bundle.path, [site], runs_root=tmp_path / "runs")
    message = str(refused.value)
    assert "\n" not in message and "simulator" in message and "`caia poc up --he`" in message
    assert not (tmp_path / "runs").exists()


def test_a_poc_without_he_contexts_refuses_an_encrypted_bundle_in_one_line(he_bundle, tmp_path):
    workspace = tmp_path / "poc"
    workspace.mkdir()
    (workspace / pocs.MARKER).write_text(json.dumps({"sites": ["site-1"], "username": pocs.ADMIN}))
    with pytest.raises(CaiaError) as refused:
        submit(he_bundle.path, target="poc", poc_workspace=workspace, runs_root=tmp_path / "runs")
    message = str(refused.value)
    assert "\n" not in message and "has no HE contexts" in message and "`caia poc up --he`" in message
    assert not (tmp_path / "runs").exists()


def test_without_tenseal_the_encrypted_variant_names_the_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "tenseal", None)  # import tenseal raises ImportError
    with pytest.raises(ContractError, match=r"pip install 'caia-jupyter\[he\]'"):
        client_app.require_tenseal()
    problems = content_problems(CLIENT_CONFIG, b"{}", job={"encryption": HE})
    assert len(problems) == 1 and "pip install 'caia-jupyter[he]'" in problems[0]
    with pytest.raises(ContractError, match="TenSEAL"):
        pocs.up(tmp_path / "poc", he=True, say=lambda *a: None)
    assert not (tmp_path / "poc").exists()


def test_a_decrypted_global_model_takes_the_initial_models_shapes_and_dtypes():
    reference = {"w": np.zeros((2, 3), np.float32), "n": np.zeros((), np.int64), "b": np.zeros(2, bool)}
    decrypted = {"w": [0.5, 1, 2, 3, 4, 5.000001], "n": [6.9999997], "b": [0.9999, 0.0001]}
    clear = in_clear(decrypted, reference)
    assert {k: (v.shape, v.dtype) for k, v in clear.items()} == {k: (v.shape, v.dtype) for k, v in reference.items()}
    assert clear["n"] == 7 and clear["b"].tolist() == [True, False] and clear["w"][1, 2] == np.float32(5.000001)
    assert in_clear(reference, reference)["w"].dtype == np.float32  # the first round arrives in clear
    with pytest.raises(ContractError):
        in_clear({"w": [1.0], "n": [1.0], "b": [1.0, 0.0]}, reference)
    with pytest.raises(ContractError):
        in_clear({"w": decrypted["w"]}, reference)


def test_the_review_names_the_he_filters_in_plain_words_without_a_warning():
    from caia_jupyter.reviewer.review import _describe_client_config

    text = _describe_client_config(json.loads(client_config(encryption=HE)))
    assert "⚠" not in text
    assert "it decrypts each global model the server sends" in text and "so the server only sums ciphertexts" in text
    assert "returns the final global model, decrypted" in text


class FakeEngine:
    """A fake of NVFLARE's server engine: it only hands out the aggregator component."""

    def __init__(self, aggregator):
        self.aggregator = aggregator

    def get_component(self, name):
        return self.aggregator


class FakeAggregator:
    """A fake of NVFLARE's HE aggregator: it takes every update and "sums" them into a marker."""

    def __init__(self):
        self.accepted, self.aggregated = [], 0

    def accept(self, shareable, fl_ctx):
        self.accepted.append(shareable)
        return True

    def aggregate(self, fl_ctx):
        from nvflare.apis.dxo import DXO, DataKind

        self.aggregated += 1
        return DXO(DataKind.WEIGHTS, {"w": "the sum"}).to_shareable()


@pytest.mark.parametrize("usable", [1, 2])
def test_a_round_with_a_single_usable_encrypted_update_keeps_the_global_model(usable, tmp_path):
    """One usable update would be its site's own weights as the new global model, which every site
    decrypts (and the final one returns to the server in clear): the global model stays instead."""
    ts = pytest.importorskip("tenseal")
    from nvflare.apis.dxo import MetaKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.fl_model import FLModel

    from caia_jupyter.aggregator.he import CaiaHEFedAvg

    context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
    context.global_scale = 2 ** 40
    controller = CaiaHEFedAvg(1, 1, output_dir=str(tmp_path))
    controller.engine, controller.fl_ctx = FakeEngine(FakeAggregator()), FLContext()
    controller._initial = {"w": np.zeros(3, np.float32)}
    results = [FLModel(params={"w": ts.ckks_vector(context, [1.0, 2.0, 3.0])},
                       meta={"client_name": f"site-{i}", "NUM_STEPS_CURRENT_ROUND": 5, MetaKey.PROCESSED_ALGORITHM: "CKKS"})
               for i in range(1, usable + 1)]
    results.append(FLModel(params={"w": [1.0]}, meta={"client_name": "site-9", "NUM_STEPS_CURRENT_ROUND": 5}))  # not CKKS
    previous = {"w": np.ones(3, np.float32)}
    new = controller._average(results, 0, previous)
    assert controller.engine.aggregator.aggregated == 1  # the aggregator is emptied for the next round either way
    excluded = {(e["site"], e["reason"]) for e in controller._excluded}
    if usable == 1:
        assert new is previous and excluded == {("site-9", "malformed_update"), ("site-1", "alone_encrypted")}
    else:
        assert new == {"w": "the sum"} and excluded == {("site-9", "malformed_update")}

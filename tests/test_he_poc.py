"""Encrypted aggregation on a real NVFLARE POC provisioned with HE contexts (`caia poc up --he`):
the run finishes, what the server held for each site's update was ciphertext, and the global model
matches the same bundle's run in clear within CKKS precision. Run under `flock /tmp/caia-poc.lock`."""

import json

import numpy as np
import pytest
import torch

from caia_jupyter.aggregator.he import DECRYPTED_BY, ENCRYPTED_MODEL, LEDGER
from caia_jupyter.reviewer import signing
from caia_jupyter.site import sites
from caia_jupyter.targets.submit import submit
from conftest import build_validated, set_source, started_poc

pytestmark = pytest.mark.slow
ts = pytest.importorskip("tenseal")
SITES = ("site-1", "site-2", "site-3")
CKKS_VECTOR = "tenseal.tensors.ckksvector.CKKSVector"


@pytest.fixture(scope="module")
def he_poc(tmp_path_factory):
    """A POC of its own, provisioned with NVFLARE's HE contexts; always stopped, no process left."""
    yield from started_poc(tmp_path_factory.mktemp("he-poc") / "ws", he=True)


def encrypted(nb):
    set_source(nb, "min_clients=1", "min_clients=3 encryption=he")


def in_clear(nb):
    set_source(nb, "min_clients=1", "min_clients=3")


def run_approved(poc, folder, edit):
    built = build_validated(folder / "nb", edit=edit)
    for name in SITES:
        signing.approve(sites.open_site(poc.site_dir(name)), built.id, {"tiny": "tiny"}, poc.reviewer_key(name))
    run = submit(built.path, target="poc", poc_workspace=poc.workspace, runs_root=folder / "runs")
    assert run.wait(timeout=400) == "finished", run.message
    return built, run


def test_the_startup_kits_hold_nvflare_contexts_the_server_without_the_secret_key(he_poc):
    assert he_poc.he
    server = ts.context_from((he_poc.kits / "server" / "startup" / "server_context.tenseal").read_bytes())
    site = ts.context_from((he_poc.kits / "site-1" / "startup" / "client_context.tenseal").read_bytes())
    assert not server.is_private() and site.is_private()


def test_an_encrypted_run_sums_ciphertexts_and_matches_the_run_in_clear(he_poc, tmp_path):
    built, run = run_approved(he_poc, tmp_path / "he", encrypted)
    assert built.manifest["job"]["encryption"] == "he-ckks"
    _, clear = run_approved(he_poc, tmp_path / "clear", in_clear)
    assert run.sites == {name: "done" for name in SITES}

    # what the server held for each site's update, written down by the server as it held it
    server_dir = next((run.path / "result").rglob(LEDGER)).parent
    held = [json.loads(line) for line in (server_dir / LEDGER).read_text().splitlines()]
    assert sorted((h["site"], h["round"]) for h in held) == sorted((s, r) for s in SITES for r in range(2))
    for update in held:
        assert update["excluded"] is None
        assert update["entries"] == {"weight": CKKS_VECTOR, "bias": CKKS_VECTOR}
        assert update["ciphertext_bytes"] > 100 * 6 * 4  # a CKKS ciphertext, not 6 float32 values

    # the global model the server kept is ciphertext: its own context cannot decrypt it, a site's can
    model = torch.load(run.global_model, weights_only=True)
    expected = torch.load(clear.global_model, weights_only=True)
    server = ts.context_from((he_poc.kits / "server" / "startup" / "server_context.tenseal").read_bytes())
    site = ts.context_from((he_poc.kits / "site-2" / "startup" / "client_context.tenseal").read_bytes())
    with np.load(server_dir / ENCRYPTED_MODEL) as kept:
        for name, cipher in kept.items():
            data = cipher.tobytes()
            clear_values = expected[name].numpy()
            assert clear_values.astype(np.float32).tobytes() not in data
            assert clear_values.astype(np.float64).tobytes() not in data
            with pytest.raises(ValueError):
                ts.ckks_vector_from(server, data).decrypt()
            decrypted = np.array(ts.ckks_vector_from(site, data).decrypt()).reshape(clear_values.shape)
            np.testing.assert_allclose(decrypted, clear_values, atol=1e-3)

    # the researcher's global model (the final one as a site decrypted it) matches the run in clear
    assert json.loads((server_dir / DECRYPTED_BY).read_text()) == {"global_model_decrypted_by": "site-1",
                                                                   "copies_agreeing": list(SITES)}
    assert model.keys() == expected.keys()
    for name in expected:
        assert model[name].dtype == expected[name].dtype
        np.testing.assert_allclose(model[name].numpy(), expected[name].numpy(), atol=1e-3)

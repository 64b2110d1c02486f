"""Attacks on the site's DP-SGD checks, with real Opacus: code that tries to send weights trained
without the differential privacy the site accounts, each stopped before the update leaves."""

from __future__ import annotations

import hashlib
import textwrap
import warnings

import pandas as pd
import pytest

from caia_jupyter.site import flare_client
from caia_jupyter.site.context import Context
from caia_jupyter.site.dp_sgd import Spent
from caia_jupyter.site.runtime import Failed, LocalCode

DP = {"mechanism": "dp-sgd", "epsilon": 3.0, "delta": 1e-5, "max_grad_norm": 1.0, "local_epochs": 1}

FEDERATED = """
    import torch
    from torch import nn

    def build_model():
        torch.manual_seed(0)
        return nn.Linear(2, 2)

    def load_data(ctx):
        rows = len(ctx.dataset("tiny"))  # 100 released rows
        x = torch.randn(rows, 2, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())

    def plain_epochs(model, data, epochs=20):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(epochs):
            for x, y in torch.utils.data.DataLoader(data, batch_size=10):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()

    def evaluate(model, data, ctx):
        return {"accuracy": 0.5}
"""

TRAIN = {
    # no DP step at all, the update claims no examples: the trained weights would still leave the site
    "num_samples_zero": """
        def train(model, data, ctx):
            plain_epochs(model, data)
            return {"num_samples": 0}
    """,
    # the accountant counts DP-SGD steps of a decoy model; the model caia sends trains without DP
    "decoy_model": """
        def train(model, data, ctx):
            decoy = nn.Linear(2, 2)
            opt = torch.optim.SGD(decoy.parameters(), lr=0.1)
            decoy, opt, loader = ctx.make_private(decoy, opt, torch.utils.data.DataLoader(data, batch_size=10))
            x, y = next(iter(loader))
            opt.zero_grad(); nn.functional.cross_entropy(decoy(x), y).backward(); opt.step()
            plain_epochs(model, data)
            return {"num_samples": 100}
    """,
    # make_private given a loader of 100000 dummy rows in batches of 1 (sample rate 1e-5): Opacus
    # would calibrate almost no noise, while each step sees the whole dataset
    "sample_rate_lie": """
        def train(model, data, ctx):
            dummy = torch.utils.data.TensorDataset(torch.zeros(100000, 2), torch.zeros(100000, dtype=torch.long))
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            private, opt, _ = ctx.make_private(model, opt, torch.utils.data.DataLoader(dummy, batch_size=1))
            x, y = data.tensors
            for _ in range(20):
                opt.zero_grad(); nn.functional.cross_entropy(private(x), y, reduction="sum").backward(); opt.step()
            return {"num_samples": 100}
    """,
    # the same lie past make_private's check: Opacus's engine called directly
    "sample_rate_lie_past_ctx": """
        def train(model, data, ctx):
            dummy = torch.utils.data.TensorDataset(torch.zeros(100000, 2), torch.zeros(100000, dtype=torch.long))
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            engine = ctx.private_training.engine
            private, opt, _ = engine.make_private(module=model, optimizer=opt, noise_multiplier=0.5, max_grad_norm=1.0,
                                                  data_loader=torch.utils.data.DataLoader(dummy, batch_size=1))
            x, y = data.tensors
            for _ in range(20):
                opt.zero_grad(); nn.functional.cross_entropy(private(x), y, reduction="sum").backward(); opt.step()
            return {"num_samples": 100}
    """,
    # the request the calibration reads is the site's: the code replaces ctx.privacy
    "request_replaced": """
        def train(model, data, ctx):
            ctx.privacy = {**ctx.privacy, "delta": 0.99}
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            private, opt, loader = ctx.make_private(model, opt, torch.utils.data.DataLoader(data, batch_size=10))
            for x, y in loader:
                opt.zero_grad(); nn.functional.cross_entropy(private(x), y).backward(); opt.step()
            return {"num_samples": 100}
    """,
    # honest DP-SGD, weighing nothing in the average: sent (the check is on the steps, not num_samples)
    "dp_no_examples": """
        def train(model, data, ctx):
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            private, opt, loader = ctx.make_private(model, opt, torch.utils.data.DataLoader(data, batch_size=10))
            for x, y in loader:
                opt.zero_grad(); nn.functional.cross_entropy(private(x), y).backward(); opt.step()
            return {"num_samples": 0}
    """,
    # ... or the request PrivateTraining calibrates with, past ctx
    "calibration_replaced": """
        def train(model, data, ctx):
            training = ctx.private_training
            training.request = training.request.model_copy(update={"delta": 0.99})
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            private, opt, loader = ctx.make_private(model, opt, torch.utils.data.DataLoader(data, batch_size=10))
            for x, y in loader:
                opt.zero_grad(); nn.functional.cross_entropy(private(x), y).backward(); opt.step()
            return {"num_samples": 100}
    """,
}


def fake_reader(name: str, spec: dict) -> pd.DataFrame:
    """A fake of the site's reader of released tables: 100 rows."""
    return pd.DataFrame({"x": range(100)})


def site_round(tmp_path, attack: str):
    """One round at a site as flare_client._serve runs it with policy "off": the bundle's round, then
    the runtime's check of what it would send (raising Failed when it refuses)."""
    source = (textwrap.dedent(FEDERATED) + textwrap.dedent(TRAIN[attack])).encode()
    (tmp_path / "federated.py").write_bytes(source)
    ctx = Context("site-1", {}, {"tiny": {"columns": []}}, rounds=1, reader=fake_reader, privacy=DP)
    code = LocalCode(tmp_path, hashlib.sha256(source).hexdigest(), ctx)
    code.start()
    incoming = {k: v.numpy().copy() for k, v in code.model.state_dict().items()}
    flare_client.check_budget_left(DP, Spent(), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = code.round(incoming, 0)
    return flare_client.check_private(DP, 1, result, Spent(), code.released_rows, 0)


@pytest.mark.parametrize("attack, category", [
    ("num_samples_zero", "not_private"),
    ("decoy_model", "not_private"),
    ("sample_rate_lie", "contract"),  # make_private: a loader over more rows than were released
    ("sample_rate_lie_past_ctx", "not_private"),  # the site: a sample rate below 1/rows released
    ("request_replaced", "raised"),  # ctx.privacy is read-only
    ("calibration_replaced", "not_private"),  # the site: less noise than it calibrates
])
def test_an_update_trained_outside_the_sites_dp_sgd_never_leaves(tmp_path, attack, category):
    with pytest.raises(Failed) as refused:
        site_round(tmp_path, attack)
    assert refused.value.report["category"] == category, refused.value.record


def test_an_update_of_no_examples_with_dp_sgd_steps_is_sent(tmp_path):
    spent = site_round(tmp_path, "dp_no_examples")
    assert spent.steps >= 1 and 0 < spent.epsilon <= DP["epsilon"]

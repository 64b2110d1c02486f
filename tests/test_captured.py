"""Captured kernel values can only be plain values: a pickle that names anything else is refused
when bundling, by verify, in the review and at the site guard, and never loaded."""

import datetime
import decimal
import functools
import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from caia_jupyter.contracts import captured
from caia_jupyter.contracts.errors import BundleError, NotebookError
from caia_jupyter.contracts.manifest import bundle_id
from caia_jupyter.researcher import bundle, compose, freenames
from caia_jupyter.reviewer import review
from caia_jupyter.site.guard import Refusal, admit
from conftest import approve, make_site
import corpus

PLAIN = {
    "numpy-float32": np.float32(0.5), "numpy-int64": np.int64(3), "numpy-dtype": np.dtype("float32"),
    "torch-dtype": torch.float32, "complex": 1 + 2j, "date": datetime.date(2026, 1, 2),
    "aware-datetime": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc), "decimal": decimal.Decimal("1.5"),
    "range": range(3),
}


class Disguised(torch.nn.Identity):
    """Claims to be torch's Identity layer; its pickle runs code."""

    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('/nonexistent/caia-marker').touch()",))


Disguised.__module__, Disguised.__qualname__ = "torch.nn.modules.linear", "Identity"


def local_function(x):
    return x


NOT_PLAIN = {
    "a-pickle-that-calls-eval-under-a-torch-type": (Disguised(), "builtins.eval"),
    "a-local-function-inside-a-partial": (functools.partial(local_function, 1), "functools.partial"),
    "a-torch-layer": (torch.nn.ReLU(), "torch.nn.modules.activation.ReLU"),
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_values_travel_and_load_as_they_were(name):
    value = PLAIN[name]
    capture = freenames.capture("value", value)
    assert capture.kind == "opaque" and captured.load(capture.payload) == value
    assert captured.problems("captured/value.pkl", capture.payload, captured.type_name(value)) == []


@pytest.mark.parametrize("name", sorted(NOT_PLAIN))
def test_a_value_whose_pickle_names_more_than_plain_constructors_is_refused_at_bundling(name):
    value, needed = NOT_PLAIN[name]
    with pytest.raises(NotebookError, match=f"needs {needed} to load, which could run any code"):
        freenames.capture("value", value)


def test_loading_never_calls_what_a_pickle_names_beyond_the_allowed(tmp_path):
    marker = tmp_path / "ran"
    data = pickle.dumps(type("X", (), {"__reduce__": lambda self: (open, (str(marker), "w"))})())
    with pytest.raises(captured.NotPlain, match="io.open"):
        captured.load(data)
    assert not marker.exists()
    with pytest.raises(captured.NotPlain, match="not a readable pickle"):
        captured.load(b"\x80\x05garbage")


def with_captured_file(folder, data: bytes, claimed_type: str):
    """A built bundle whose captured LEARNING_RATE.pkl is replaced by `data`, manifest kept consistent."""
    built = compose.build(corpus.write("free_name", folder), folder / "bundle", namespace={"LEARNING_RATE": np.float32(0.5)})
    (built.path / "captured" / "LEARNING_RATE.pkl").write_bytes(data)
    manifest = json.loads((built.path / "manifest.json").read_text())
    manifest["files"]["captured/LEARNING_RATE.pkl"].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                                                           python_type=claimed_type)
    (built.path / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(built.records)
    return built.path, bundle_id(manifest)


@pytest.mark.parametrize("data, claimed, reason", [
    (pickle.dumps(Disguised()), "torch.nn.modules.linear.Identity", "needs builtins.eval to load"),
    (pickle.dumps(np.float64(0.5)), "numpy.float32", "holds a numpy.float64, not the numpy.float32"),
], ids=["code-under-a-torch-type", "a-type-that-lies"])
def test_verify_review_and_the_guard_refuse_a_captured_file_that_is_not_a_plain_value(tmp_path, data, claimed, reason):
    path, bid = with_captured_file(tmp_path, data, claimed)
    assert any(reason in problem for problem in bundle.verify(path)[1])
    with pytest.raises(BundleError, match=reason):
        review.render(path)
    site = make_site(tmp_path / "sites", "site-1")
    approve(site, bid, {"tiny": "tiny"})
    app = build_job_app(bundle.Bundle(path, bid, json.loads((path / "manifest.json").read_text())), tmp_path / "job")
    with pytest.raises(Refusal, match=reason):
        admit(app, site.path)


def build_job_app(built, job):
    """The site app of `built` as NVFLARE deploys it, without computing initial weights."""
    from caia_jupyter.contracts.client_app import app_path
    from caia_jupyter.contracts.fileset import MANIFEST

    app = job / "app_site-1"
    for name in [*built.manifest["files"], MANIFEST]:
        (app / app_path(name)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built.path / name, app / app_path(name))
    return app

"""Local validation through papermill with a real kernel."""

import hashlib
import json

import nbformat
import pytest

from conftest import set_source

pytestmark = pytest.mark.slow


def test_a_passing_validation_writes_a_record_bound_to_the_id(validated_good):
    record = json.loads((validated_good.records / "validation.json").read_text())
    assert record["bundle_id"] == validated_good.id and record["passed"] is True
    assert record["result"]["num_samples"] == 24
    assert set(record["result"]["final_evaluation"]) == {"accuracy"}
    assert record["versions"]["nvflare"] == "2.9.0" and "torch" in record["versions"]
    executed = validated_good.records / record["executed_notebook"]
    assert hashlib.sha256(executed.read_bytes()).hexdigest() == record["executed_notebook_sha256"]
    nb = nbformat.read(executed, as_version=4)
    nbformat.validate(nb)
    assert all(not any(o.get("output_type") == "error" for o in c.get("outputs", [])) for c in nb.cells)


def test_validation_writes_nothing_into_the_bundle_on_a_machine_that_writes_bytecode(validated_good):
    import os
    import sys

    from caia_jupyter.researcher import bundle

    assert "PYTHONDONTWRITEBYTECODE" not in os.environ and not sys.dont_write_bytecode  # as on users' machines
    assert not list(validated_good.path.rglob("__pycache__"))
    assert bundle.verify(validated_good.path, validated_good.id) == (validated_good.id, [])


def test_a_failing_train_names_the_cell_and_the_exception(write_notebook, caia):
    path = write_notebook("train_raises")
    code, out, err = caia("validate", path)
    assert code == 1
    first = out.splitlines()[0]
    assert first.startswith("validation FAILED: federated cell 4 (notebook cell 8: 'def train(model, data, ctx):') line 4, in train")
    assert first.endswith("RuntimeError: boom in train")
    record = json.loads((path.parent / "bundles" / "train_raises" / "records" / "validation.json").read_text())
    assert record["passed"] is False and record["error"]["exception"] == "RuntimeError"
    assert record["error"]["notebook_cell"] == 8
    assert (path.parent / "bundles" / "train_raises" / "records" / "validation.ipynb").is_file()


def test_a_broken_contract_is_reported_plainly(write_notebook, caia):
    path = write_notebook("good", edit=lambda nb: set_source(nb, '{"num_samples": len(x), "train_loss": loss.item()}', "loss.item()"))
    code, out, _ = caia("validate", path)
    assert code == 1
    assert ("federated cell 4 (notebook cell 8: 'def train(model, data, ctx):') line 2, in train: ContractError: "
            "train(model, data, ctx) must return a dict with 'num_samples'") in out


def test_submit_gate_requires_a_passing_record_for_the_exact_id(validated_good, tmp_path):
    import shutil

    from caia_jupyter.contracts.errors import ValidationFailed
    from caia_jupyter.researcher import bundle, validation

    assert validation.require_passed(validated_good)["bundle_id"] == validated_good.id
    copy = bundle.load(shutil.copytree(validated_good.path, tmp_path / "copy"))
    record = json.loads((copy.records / "validation.json").read_text())
    record["bundle_id"] = "sha256:" + "0" * 64
    (copy.records / "validation.json").write_text(json.dumps(record))
    with pytest.raises(ValidationFailed, match="is not validated"):
        validation.require_passed(copy)


def test_two_validations_at_once_in_one_process_both_pass(tmp_path):
    """The Jupyter server validates in a thread pool: two notebooks validate at once, and neither changes
    the process's working folder."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import corpus
    from caia_jupyter.researcher import compose, validation

    built = [compose.build(corpus.write("good", tmp_path / name)) for name in ("a", "b")]
    before = os.getcwd()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(validation.validate, built))
    assert [r.passed for r in results] == [True, True], [r.error for r in results]
    assert os.getcwd() == before

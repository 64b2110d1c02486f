"""benchmarks/privacy.py derives its variants from the DP example notebook: the run without DP must
not request DP nor call ctx.make_private, and each DP variant must differ from the notebook only in
its epsilon (and the rounds asked)."""

import pytest

from caia_jupyter.researcher import compose
from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("privacy")


def test_the_variant_without_dp_requests_none_and_never_calls_make_private(bench, tmp_path):
    built = compose.build(bench.write_variant(tmp_path, None, 4))
    code = (built.path / "federated.py").read_text()
    assert "privacy" not in built.manifest["job"] and built.manifest["job"]["rounds"] == 4
    assert "make_private" not in code and "ctx.privacy" not in code
    assert 'loader = data["train"]' in code and "for x, y in loader:" in code


def test_a_dp_variant_changes_only_the_epsilon(bench, tmp_path):
    dp, original = (compose.build(bench.write_variant(tmp_path / name, epsilon, 5))
                    for name, epsilon in (("eight", 8.0), ("three", 3.0)))
    assert dp.manifest["job"]["privacy"] == {**original.manifest["job"]["privacy"], "epsilon": 8.0}
    assert (dp.path / "federated.py").read_text() == (original.path / "federated.py").read_text()
    assert "ctx.make_private(model, optimizer, data[\"train\"])" in (dp.path / "federated.py").read_text()


def test_a_notebook_that_no_longer_holds_what_the_benchmark_edits_is_named(bench):
    with pytest.raises(SystemExit, match="no longer holds"):
        bench.edit("def train(model, data, ctx): ...", bench.MAKE_PRIVATE, "")

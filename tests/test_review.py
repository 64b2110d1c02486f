import html
import re

import numpy as np
import nbformat
import pytest

from caia_jupyter import bundle, review
from caia_jupyter.errors import BundleError


def text_of(path):
    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


@pytest.mark.slow
def test_review_shows_code_notes_datasets_files_and_validation(validated_good, tmp_path, caia):
    code, out, _ = caia("review", validated_good.path, "-o", tmp_path / "review.html")
    assert code == 0
    text = text_of(tmp_path / "review.html")
    assert validated_good.id in text
    assert "def train(model, data, ctx):" in text and "A linear model." in text
    assert "not covered by the bundle id" in text
    assert "x1" in text and "label" in text  # requested schema
    assert validated_good.manifest["files"]["federated.py"]["sha256"] in text
    assert "Passed" in text
    assert "local exploration" not in text  # local cells stay out
    assert "Opaque" not in text


def test_review_calls_out_opaque_values_and_sanitises_notes(write_notebook, tmp_path):
    path = write_notebook("free_name")
    nb = nbformat.read(path, as_version=4)
    nb.cells[4].source = "A linear model.<script>alert('x')</script>"
    nbformat.write(nb, path)
    built = bundle.build(path, tmp_path / "b", namespace={"LEARNING_RATE": np.float32(0.5)})
    page = review.render(built.path).read_text()
    text = text_of(built.records / "review.html")
    assert "Opaque values captured" in text and "numpy.float32" in text
    assert "Not validated" in text
    assert "<script>alert" not in page


def test_review_refuses_a_tampered_bundle(write_notebook, tmp_path):
    built = bundle.build(write_notebook("good"), tmp_path / "b")
    (built.path / "caia_runner.py").write_text("print('hi')\n")
    with pytest.raises(BundleError, match="is not intact: file caia_runner.py"):
        review.render(built.path)
    assert not (built.records / "review.html").exists()

"""The site's store of approved bundles and the review's diff against it (reviewer/store.py, changes.py)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from caia_jupyter.contracts.errors import SiteError
from caia_jupyter.researcher import compose
from caia_jupyter.reviewer import changes, review, store
from conftest import approve, build_validated, make_site, set_source, write_corpus

ONE_LINE = ('lr=ctx.params["lr"])', 'lr=ctx.params["lr"] * 2)')


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path / "sites", "site-a")


def build(tmp_path, edit=None):
    """The good corpus notebook (edited by `edit(nb)`), built into its one bundle folder, as a researcher rebuilds it."""
    return compose.build(write_corpus("good", tmp_path / "work", edit))


def edit(*replacements):
    def apply(nb):
        for old, new in replacements:
            set_source(nb, old, new)
    return apply


def minus_plus(diff: str) -> tuple[list[str], list[str]]:
    lines = diff.splitlines()
    return [x for x in lines if x.startswith("-")], [x for x in lines if x.startswith("+")]


def test_one_changed_line_of_train_is_exactly_what_the_diff_shows(site, tmp_path):
    kept = store.keep(site, build(tmp_path))
    new = build(tmp_path, edit(ONE_LINE))
    found = changes.compare(new, site)
    assert found.base.id == f"sha256:{kept.name}" and found.base.path == kept
    assert [(c.title, c.status) for c in found.changed] == [("federated cell 4", "changed")]
    removed, added = minus_plus(found.changed[0].diff)
    assert removed == ['-    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"])']
    assert added == ['+    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"] * 2)']
    assert found.other == () and found.cosmetic is False
    assert all(c.diff == "" for c in found.cells if c.status == "unchanged")


def test_comments_and_blank_lines_only_are_cosmetic(site, tmp_path):
    store.keep(site, build(tmp_path))
    new = build(tmp_path, edit(("    loss.backward()\n", "    loss.backward()  # gradients\n\n"),
                               ("    x, y = data\n    with", "    # the held-out rows\n    x, y = data\n    with")))
    found = changes.compare(new, site)
    assert [(c.title, c.status) for c in found.changed] == [("federated cell 4", "cosmetic"), ("federated cell 5", "cosmetic")]
    assert found.cosmetic is True and found.to_json()["cosmetic"] is True


def test_a_code_change_beside_a_comment_change_is_not_cosmetic(site, tmp_path):
    store.keep(site, build(tmp_path))
    found = changes.compare(build(tmp_path, edit(ONE_LINE, ("    loss.backward()\n", "    loss.backward()  # g\n"))), site)
    assert found.cosmetic is False
    assert [c.status for c in found.changed] == ["changed"]


def test_settings_changes_are_named_in_other(site, tmp_path):
    store.keep(site, build(tmp_path))
    new = build(tmp_path, edit(("param.lr=0.1", "param.lr=0.2"), ("rounds=2", "rounds=3")))
    found = changes.compare(new, site)
    assert list(found.other) == ["param lr: 0.1 -> 0.2", "rounds: 2 -> 3"]
    assert found.changed == [] and found.cosmetic is False


def test_other_names_requirements_datasets_and_captured_values(tmp_path):
    old, new = (compose.build(write_corpus("good", tmp_path / name)) for name in ("a", "b"))
    manifest = json.loads(json.dumps(new.manifest))
    manifest["datasets"]["tiny"]["columns"][0]["kind"] = "category"
    manifest["datasets"]["extra"] = {"columns": []}
    manifest["files"]["captured/scale.pkl"] = {"sha256": "ab" * 32, "size": 3, "role": "captured", "opaque": True,
                                               "python_name": "scale", "python_type": "float"}
    edited = type(new)(new.path, new.id, manifest)  # a fake Bundle: only its manifest differs
    (new.path / "requirements.txt").write_text("numpy==2.1.0\n" + (old.path / "requirements.txt").read_text())
    said = changes.other_changes(old, edited)
    column = old.manifest["datasets"]["tiny"]["columns"][0]
    assert "requirement added: numpy==2.1.0" in said
    assert "dataset extra added" in said
    assert f"dataset tiny column {column['name']}: {column['kind']} -> category" in said
    assert "captured value scale added (float)" in said


def test_the_closest_approved_bundle_is_the_base(site, tmp_path):
    near = store.keep(site, build(tmp_path))
    store.keep(site, build(tmp_path, edit(("    x, y = data\n    optimizer", "    x, y = data\n    x = x * 1\n    x = x + 0\n"
                                                                              "    optimizer"), ("rounds=2", "rounds=4"))))
    found = changes.compare(build(tmp_path, edit(ONE_LINE)), site)
    assert found.base.path == near


def test_an_edited_or_misfiled_store_entry_is_skipped(site, tmp_path, caplog):
    first = store.keep(site, build(tmp_path))
    (first / "federated.py").write_text((first / "federated.py").read_text() + "import os\n")
    second = build(tmp_path, edit(ONE_LINE))
    misfiled = store.folder(site) / ("0" * 64)
    shutil.copytree(store.keep(site, second), misfiled)
    with caplog.at_level(logging.WARNING, logger="caia_jupyter.reviewer.store"):
        assert [b.id for b in store.approved_bundles(site)] == [second.id]
        assert changes.compare(second, site) is None  # the only intact entry is this very bundle
    warned = "\n".join(caplog.messages)
    assert f"skips approved/{first.name}: " in warned and "file federated.py" in warned
    assert f"skips approved/{'0' * 64}: " in warned and f"expected sha256:{'0' * 64}" in warned


def test_keep_is_idempotent_and_repairs_a_damaged_entry(site, tmp_path):
    bundle = build(tmp_path)
    kept = store.keep(site, bundle)
    assert store.keep(site, bundle) == kept
    (kept / "requirements.txt").write_text("evil==1\n")
    assert store.keep(site, bundle) == kept
    assert [b.id for b in store.approved_bundles(site)] == [bundle.id]
    assert not (kept / "records").exists()
    assert [p.name for p in store.folder(site).iterdir()] == [kept.name]  # no staging folder left


def test_keep_refuses_a_store_that_is_a_link(site, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.folder(site).symlink_to(elsewhere)
    with pytest.raises(SiteError, match="approved is a symbolic link"):
        store.keep(site, build(tmp_path))
    assert list(elsewhere.iterdir()) == []


def test_the_review_page_shows_what_changed(site, tmp_path):
    page = review.render(build(tmp_path).path, tmp_path / "first.html", site).read_text()
    assert "First bundle this site reviews: nothing to compare" in page
    base = store.keep(site, build(tmp_path)).name[:12]
    new = build(tmp_path, edit(ONE_LINE))
    page = review.render(new.path, tmp_path / "changed.html", site).read_text()
    assert f"Changed since site <code>site-a</code> approved <code>{base}</code>" in page
    assert "1 part of the federated code changed" in page and "federated cell 4: changed" in page
    assert page.index("Changed since site") < page.index("Federated code")
    assert '<span class="gi">+    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"] * 2)</span>' in page
    page = review.render(build(tmp_path, edit(("    loss.backward()\n", "    loss.backward()  # g\n"))).path,
                         tmp_path / "cosmetic.html", site).read_text()
    assert "Cosmetic: same syntax tree; the bytes changed, so it still needs a new approval." in page


@pytest.mark.slow
def test_approving_keeps_the_bundle_and_review_site_diffs_against_it(site, tmp_path, caia):
    approved = build_validated(tmp_path / "work")  # approve signs only a validated bundle
    approve(site, approved.id, {"tiny": "tiny"}, bundle=approved)
    assert [b.id for b in store.approved_bundles(site)] == [approved.id]
    new = build(tmp_path, edit(ONE_LINE))
    code, out, _ = caia("review", new.path, "--site", site.path, "--json")
    assert code == 0
    found = json.loads(out)["changes"]
    assert found["base"] == {"bundle_id": approved.id, "short_id": approved.short_id}
    assert [(c["cell"], c["status"]) for c in found["cells"] if c["status"] != "unchanged"] == [(4, "changed")]
    assert found["other"] == [] and found["cosmetic"] is False
    code, out, _ = caia("review", new.path, "--site", site.path)
    assert f"changed since site-a approved {approved.short_id}: federated cell 4 changed" in out
    assert "  federated cell 4 changed:" in out
    assert '      +    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"] * 2)' in out.splitlines()


def test_the_terminal_lists_changed_and_cosmetic_parts_apart_with_each_changed_diff_bounded(site, tmp_path):
    from caia_jupyter.cli import DIFF_LINES_SHOWN, changes_lines

    store.keep(site, build(tmp_path))
    long = "".join(f"    step_{i} = {i}\n" for i in range(60))  # 60 added lines in train's cell
    new = build(tmp_path, edit(ONE_LINE, ("    optimizer.step()\n", "    optimizer.step()\n" + long),
                               ("    x, y = data\n    with", "    # the held-out rows\n    x, y = data\n    with")))
    lines = changes_lines(changes.compare(new, site), site)
    assert lines[0].endswith(": federated cell 4 changed; federated cell 5 cosmetic")
    assert lines[1] == "  federated cell 4 changed:"
    diff = changes.compare(new, site).changed[0].diff.splitlines()
    assert len(diff) > DIFF_LINES_SHOWN
    assert lines[2:2 + DIFF_LINES_SHOWN] == [f"      {line}" for line in diff[:DIFF_LINES_SHOWN]]
    assert lines[2 + DIFF_LINES_SHOWN] == f"      … {len(diff) - DIFF_LINES_SHOWN} more lines in the review page"
    assert len(lines) == 3 + DIFF_LINES_SHOWN  # the cosmetic cell's diff is not printed, nothing else changed
    cosmetic = build(tmp_path, edit(("    loss.backward()\n", "    loss.backward()  # g\n")))
    assert changes_lines(changes.compare(cosmetic, site), site)[1:] == [
        "  cosmetic: same syntax tree; the bytes changed, so it still needs a new approval"]

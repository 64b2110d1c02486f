"""The site's store of approved bundles and the review's diff against it (reviewer/store.py, changes.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest

from caia_jupyter.contracts.errors import NotebookError, SiteError
from caia_jupyter.contracts.manifest import bundle_id
from caia_jupyter.researcher import compose
from caia_jupyter.researcher.bundle import json_changes, require_intact
from caia_jupyter.researcher.history import value_changes
from caia_jupyter.reviewer import changes, parts, review, signing, store
from caia_jupyter.reviewer.capabilities import report as capability_report
from conftest import approve, build_validated, make_site, reviewer_key, set_source, write_corpus

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


def kept(site, bundle):
    """Keep `bundle` in the store of `site` and approve it there as the site's reviewer, as `caia approve`
    does (without its validation check); the store's folder of it."""
    folder = store.keep(site, bundle)
    approve(site, bundle.id, {"tiny": "tiny"})
    return folder


def minus_plus(diff: str) -> tuple[list[str], list[str]]:
    lines = diff.splitlines()
    return [x for x in lines if x.startswith("-")], [x for x in lines if x.startswith("+")]


def test_one_changed_line_of_train_is_exactly_what_the_diff_shows(site, tmp_path):
    base = kept(site, build(tmp_path))
    new = build(tmp_path, edit(ONE_LINE))
    found = changes.compare(new, site)
    assert found.base.id == f"sha256:{base.name}" and found.base.path == base
    assert [(c.title, c.status) for c in found.changed] == [("federated cell 4", "changed")]
    removed, added = minus_plus(found.changed[0].diff)
    assert removed == ['-    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"])']
    assert added == ['+    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"] * 2)']
    assert found.other == () and found.cosmetic is False
    assert all(c.diff == "" for c in found.cells if c.status == "unchanged")


def test_comments_and_blank_lines_only_are_cosmetic(site, tmp_path):
    kept(site, build(tmp_path))
    new = build(tmp_path, edit(("    loss.backward()\n", "    loss.backward()  # gradients\n\n"),
                               ("    x, y = data\n    with", "    # the held-out rows\n    x, y = data\n    with")))
    found = changes.compare(new, site)
    assert [(c.title, c.status) for c in found.changed] == [("federated cell 4", "cosmetic"), ("federated cell 5", "cosmetic")]
    assert found.cosmetic is True and found.to_json()["cosmetic"] is True


def test_a_code_change_beside_a_comment_change_is_not_cosmetic(site, tmp_path):
    kept(site, build(tmp_path))
    found = changes.compare(build(tmp_path, edit(ONE_LINE, ("    loss.backward()\n", "    loss.backward()  # g\n"))), site)
    assert found.cosmetic is False
    assert [c.status for c in found.changed] == ["changed"]


def test_settings_changes_are_named_in_other(site, tmp_path):
    kept(site, build(tmp_path))
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
    near = kept(site, build(tmp_path))
    kept(site, build(tmp_path, edit(("    x, y = data\n    optimizer", "    x, y = data\n    x = x * 1\n    x = x + 0\n"
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
    base = kept(site, build(tmp_path)).name[:12]
    new = build(tmp_path, edit(ONE_LINE))
    page = review.render(new.path, tmp_path / "changed.html", site).read_text()
    assert f"Changed since site <code>site-a</code> approved <code>{base}</code>" in page
    assert "1 part of the federated code changed" in page and "federated cell 4: changed" in page
    assert page.index("Changed since site") < page.index("Federated code")
    assert '<span class="gi">+    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"] * 2)</span>' in page
    page = review.render(build(tmp_path, edit(("    loss.backward()\n", "    loss.backward()  # g\n"))).path,
                         tmp_path / "cosmetic.html", site).read_text()
    assert "Cosmetic: same syntax tree; the bytes changed, so it still needs a new approval." in page


def test_the_review_page_the_terminal_and_the_review_view_read_the_store_once(site, tmp_path, caia, monkeypatch):
    from caia_jupyter.reviewer import workbench

    base = kept(site, build(tmp_path))
    new = build(tmp_path, edit(ONE_LINE))
    reads = []
    monkeypatch.setattr(changes, "approved_bundles", lambda s: reads.append(s.name) or store.approved_bundles(s))
    shown = review.rendered(new.path, tmp_path / "review.html", site)
    assert reads == ["site-a"] and shown.path == tmp_path / "review.html" and shown.bundle.id == new.id
    assert shown.changes.base.id == f"sha256:{base.name}" and shown.capabilities.to_json() == capability_report(new).to_json()
    reads.clear()
    code, out, _ = caia("review", new.path, "--site", site.path, "--json")
    assert code == 0 and reads == ["site-a"] and json.loads(out)["changes"] == shown.changes.to_json()
    reads.clear()
    view = workbench.view(new.path, workbench.Signer(site, None, None, "no key"))
    assert reads == ["site-a"] and view["changes"] == shown.changes.to_json()
    assert view["capabilities"] == shown.capabilities.to_json()


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

    kept(site, build(tmp_path))
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


def attacked(source: str) -> str:
    """federated.py of the good corpus with cell 4 (train) patched to scale every SGD learning rate by
    1000, and the approved train re-appended, byte for byte, under a second "cell 4" marker in cell 5."""
    train = source[source.index("# ---- federated cell 4 ----"):source.index("# ---- federated cell 5 ----")]
    patched = train.replace("def train(", "_SGD = torch.optim.SGD\ntorch.optim.SGD = lambda p, lr: _SGD(p, lr=lr * 1000)\n\n"
                            "def train(", 1)
    return source.replace(train, patched).rstrip("\n") + "\n\n" + train


def hand_made(bundle, folder, module: str):
    """A copy of `bundle` in `folder` whose federated.py is `module`, its manifest rehashed: a bundle
    made by hand, not by caia."""
    shutil.copytree(bundle.path, folder, ignore=shutil.ignore_patterns("records"))
    (folder / "federated.py").write_text(module)
    manifest = json.loads(json.dumps(bundle.manifest))
    manifest["files"]["federated.py"].update(sha256=hashlib.sha256(module.encode()).hexdigest(), size=len(module.encode()))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return require_intact(folder, bundle_id(manifest))


def test_a_cell_holding_a_cell_marker_line_is_refused_when_built(tmp_path):
    def plant(nb):
        set_source(nb, "def evaluate(", "# ---- federated cell 4 ----\ndef evaluate(")
    with pytest.raises(NotebookError) as refused:
        build(tmp_path, plant)
    message = str(refused.value)
    assert message.startswith("federated cell 5 (notebook cell ") and " line " in message
    assert "'# ---- federated cell 4 ----' reads as the marker caia writes" in message and "\n" not in message


def test_a_repeated_cell_marker_in_a_hand_made_bundle_shows_the_changed_cell(site, tmp_path):
    approved = build(tmp_path)
    kept(site, approved)
    forged = hand_made(approved, tmp_path / "forged", attacked(approved.source("federated.py")))
    found = changes.compare(forged, site)
    assert found.cosmetic is False
    assert [(c.title, c.status) for c in found.changed] == [("federated cell 4", "changed"), ("federated cell 5", "changed")]
    assert "+torch.optim.SGD = lambda p, lr: _SGD(p, lr=lr * 1000)" in found.changed[0].diff


def test_parts_are_never_dropped_for_a_repeated_key(monkeypatch):
    halves = [parts.ModulePart("cell", "x = 1\n", 1), parts.ModulePart("cell", "y = 2\n", 1)]
    monkeypatch.setattr(changes, "split_module", lambda source: halves if source == "new" else halves[:1])
    assert [(c.status, c.diff) for c in changes.part_changes("old", "new")] == [("changed", "@@ -1 +1,2 @@\n x = 1\n+y = 2")]


@pytest.mark.parametrize("new, said", [(True, "param k: 1 -> True"), (1.0, "param k: 1 -> 1.0")])
def test_a_param_of_another_type_is_a_change(site, tmp_path, new, said):
    kept(site, build(tmp_path, edit(("param.lr=0.1", "param.lr=0.1 param.k=1"))))
    found = changes.compare(build(tmp_path, edit(("param.lr=0.1", f"param.lr=0.1 param.k={new!r}"))), site)
    assert list(found.other) == [said] and found.cosmetic is False


def test_values_that_read_alike_are_shown_as_json():
    assert value_changes("param ", {"k": 1, "n": None}, {"k": "1", "n": "None"}) == ['param k: 1 -> "1"', 'param n: null -> "None"']


@pytest.mark.parametrize("old, new, field, before, after", [(1, True, "x", "1", "true"), (1, 1.0, "x", "1", "1.0"),
                                                              ({"a": [0]}, {"a": [False]}, "x.a.0", "0", "false")])
def test_json_changes_tell_numbers_from_booleans(old, new, field, before, after):
    assert list(json_changes({"x": old}, {"x": new})) == [(field, before, after)]
    assert list(json_changes({"x": old}, {"x": old})) == []


def test_only_a_stored_bundle_the_site_approved_is_a_base(site, tmp_path):
    honest = build(tmp_path)
    kept(site, honest)
    evil = build(tmp_path, edit(ONE_LINE))
    decoy = build(tmp_path, edit(ONE_LINE, ("    loss.backward()\n", "    loss.backward()  # x\n")))
    store.keep(site, decoy)  # planted in approved/ by whoever can write there: no approval signed by a trusted key
    found = changes.compare(evil, site)
    assert found.base.id == honest.id and found.cosmetic is False
    assert [(c.title, c.status) for c in found.changed] == [("federated cell 4", "changed")]
    shutil.rmtree(store.folder(site) / honest.id.removeprefix("sha256:"))
    assert changes.compare(evil, site) is None  # the decoy alone is never a base


@pytest.mark.parametrize("planted", ["entry-a-dangling-link", "entry-a-link-to-a-folder", "store-a-plain-file"])
def test_keep_answers_a_planted_store_entry_in_one_line(site, tmp_path, planted):
    bundle = build(tmp_path)
    entry = store.folder(site) / bundle.id.removeprefix("sha256:")
    if planted == "store-a-plain-file":
        store.folder(site).write_text("x")
        named = f"{store.folder(site)} is not a folder; caia keeps the site's approved bundles there"
    else:
        store.folder(site).mkdir()
        (tmp_path / "elsewhere").mkdir()
        entry.symlink_to(tmp_path / ("nowhere" if planted == "entry-a-dangling-link" else "elsewhere"))
        named = f"store entry {entry} is a symbolic link; caia keeps a copy of the approved bundle there, so remove the link"
    with pytest.raises(SiteError) as refused:
        store.keep(site, bundle)
    assert str(refused.value).startswith(named) and "\n" not in str(refused.value)
    assert list((tmp_path / "elsewhere").iterdir() if (tmp_path / "elsewhere").exists() else []) == []


@pytest.mark.slow
def test_caia_approve_answers_a_planted_store_entry_in_one_line(site, validated_good, caia, tmp_path):
    bundle = shutil.copytree(validated_good.path, tmp_path / "validated")  # approve signs only a validated bundle
    entry = store.folder(site) / validated_good.id.removeprefix("sha256:")
    store.folder(site).mkdir()
    entry.symlink_to(tmp_path / "nowhere")
    code, out, err = caia("approve", bundle, "--site", site.path, "--key", reviewer_key(site), "--dataset", "tiny")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"store entry {entry} is a symbolic link" in err
    assert list(site.approvals_dir.glob("*.json")) == []
    entry.unlink()
    store.folder(site).rmdir()
    store.folder(site).write_text("x")
    code, _, err = caia("approve", bundle, "--site", site.path, "--key", reviewer_key(site), "--dataset", "tiny")
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"{store.folder(site)} is not a folder" in err
    assert list(site.approvals_dir.glob("*.json")) == []


def test_a_revoked_bundle_is_no_base_until_approved_again(site, tmp_path):
    first = build(tmp_path)
    kept(site, first)
    revoked = build(tmp_path, edit(ONE_LINE))
    kept(site, revoked)
    signing.revoke(site, revoked.id, reviewer_key(site), reason="reads too much")
    cosmetic_of_revoked = build(tmp_path, edit(ONE_LINE, ("    loss.backward()\n", "    loss.backward()  # x\n")))
    found = changes.compare(cosmetic_of_revoked, site)
    assert found.base.id == first.id and found.cosmetic is False  # not "cosmetic" against the code taken back
    approve(site, revoked.id, {"tiny": "tiny"})  # approved anew, after the revocation
    assert changes.compare(cosmetic_of_revoked, site).base.id == revoked.id


def test_compare_reads_each_approval_and_revocation_once_however_many_bundles_are_stored(site, tmp_path, monkeypatch):
    from collections import Counter

    from caia_jupyter.site import approvals

    first = build(tmp_path)
    kept(site, first)
    for n in range(3):
        kept(site, build(tmp_path, edit(("    loss.backward()\n", f"    loss.backward()\n    step_{n} = {n}\n"))))
    revoked = build(tmp_path, edit(ONE_LINE))
    kept(site, revoked)
    signing.revoke(site, revoked.id, reviewer_key(site), reason="reads too much")
    reads, real = Counter(), approvals._read_signed
    monkeypatch.setattr(approvals, "_read_signed", lambda path, *rest: reads.update([path]) or real(path, *rest))
    found = changes.compare(build(tmp_path, edit(ONE_LINE, ("    loss.backward()\n", "    loss.backward()  # x\n"))), site)
    assert found.base.id == first.id  # the revoked bundle, closest by its code, is no base
    files = [*site.approvals_dir.glob("*.json"), *site.revocations_dir.glob("*.json")]
    assert len(files) == 6 and reads == Counter(files)

"""The Review view in JupyterLab, in headless Chromium: a reviewer's server (started with site-1's
reviewer key and site) opens a packed bundle from the file browser, shows what the code can do and
the review page in a sandboxed frame, and Approve signs for site-1; with the other two sites'
approvals, site-1 then admits the bundle in a real NVFLARE simulator run."""

import json
import shutil
from contextlib import contextmanager
from datetime import timedelta

import pytest

from caia_jupyter.researcher import compose, transport, validation
from caia_jupyter.reviewer import signing
from caia_jupyter.site.approvals import find_approval
from caia_jupyter.site.keys import key_id, load_private_key
from caia_jupyter.targets.demo_sites import make_sites
from caia_jupyter.targets.submit import submit
from browser_fixtures import NOTEBOOK, running_lab
from conftest import REPO

pytestmark = pytest.mark.slow
expect = pytest.importorskip("playwright.sync_api").expect
SCREENSHOT = REPO / "labextension" / "review-view.png"
EDITED = ("manual_seed(ctx.round)", "manual_seed(ctx.round + 1)")  # one line of train: the earlier version has the second
SOCKET = ('    x, y = data["train"]\n', '    x, y = data["train"]\n    import socket\n')  # line 4 of train's notebook cell


@pytest.fixture(scope="module")
def reviewer_lab(tmp_path_factory):
    """The example bundle, validated, packed into the root of a jupyter-lab that signs as site-1's reviewer;
    the three demo sites and their reviewers' keys lie outside that root."""
    base = tmp_path_factory.mktemp("reviewer-lab")
    study, root = base / "study", base / "root"
    shutil.copytree(REPO / "example_notebooks" / "samples", study / "samples")
    text = (REPO / "example_notebooks" / NOTEBOOK).read_text()
    centers = make_sites(base / "sites")
    # site-1 approved an earlier version, whose train seeded its shuffling one higher
    (study / NOTEBOOK).write_text(text.replace("rounds=5", "rounds=2").replace(EDITED[0], EDITED[1]))
    earlier = compose.build(study / NOTEBOOK, study / "earlier")
    assert validation.validate(earlier).passed
    signing.approve(centers[0].site, earlier.id, {"breast_cancer": "breast_cancer"}, centers[0].reviewer_key, bundle=earlier)
    (study / NOTEBOOK).write_text(text.replace(*(json.dumps(s)[1:-1] for s in SOCKET)))
    with_socket = compose.build(study / NOTEBOOK, study / "with-socket")
    (study / NOTEBOOK).write_text(text.replace("rounds=5", "rounds=2"))
    built = compose.build(study / NOTEBOOK)
    assert validation.validate(built).passed
    root.mkdir()
    transport.pack(built.path, root / "example.zip")
    shutil.copytree(built.path, root / "example-bundle")
    shutil.copytree(with_socket.path, root / "socket-bundle")
    yield from running_lab(base, root, f"--CaiaExtension.reviewer_key={centers[0].reviewer_key}",
                           f"--CaiaExtension.review_site={centers[0].site.path}", centers=centers, bundle=built, earlier=earlier)


@contextmanager
def lab_page(browser, lab):
    """JupyterLab of `lab` in a fresh browser context, closed on leaving."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{lab['url']}/lab?reset&token={lab['token']}")
        yield page
    finally:
        context.close()


def test_review_bundle_on_a_folder_in_the_file_browser(browser, reviewer_lab):
    lab, built = reviewer_lab, reviewer_lab["bundle"]
    with lab_page(browser, lab) as page:
        page.locator(".jp-DirListing-item", has_text="example-bundle").click(button="right")
        page.locator(".lm-Menu-item", has_text="Review bundle").click()
        view = page.locator(".caia-review")
        expect(view.locator(".caia-review-id")).to_have_text(built.short_id)
        expect(view.locator(".caia-review-approve")).to_be_enabled()
        reject, reason = view.locator(".caia-review-reject"), view.locator(".caia-review-reason")
        expect(reject).to_be_disabled()
        reason.fill("too early")
        expect(reject).to_be_enabled()
        reason.fill("  ")
        expect(reject).to_be_disabled()
        expiry, approve = view.locator(".caia-review-expiry"), view.locator(".caia-review-approve")
        expect(expiry).to_have_attribute("placeholder", "site default")
        expiry.fill("-1")
        expect(approve).to_be_disabled()
        expiry.fill("")
        expect(approve).to_be_enabled()


def test_a_finding_shows_its_heading_and_its_line_in_the_notebook_cell(browser, reviewer_lab):
    lab = reviewer_lab
    with lab_page(browser, lab) as page:
        page.locator(".jp-DirListing-item", has_text="socket-bundle").click(button="right")
        page.locator(".lm-Menu-item", has_text="Review bundle").click()
        finding = page.locator('.caia-review [data-caia-capability="network"]')
        expect(finding).to_have_count(1)
        expect(finding).to_contain_text("Network: import socket (cell 4, line 4; federated.py line ")


def test_open_a_packed_bundle_approve_it_and_the_site_admits_it(browser, reviewer_lab):
    lab, built = reviewer_lab, reviewer_lab["bundle"]
    site_1 = lab["centers"][0]
    with lab_page(browser, lab) as page:
        page.locator(".jp-DirListing-item", has_text="example.zip").dblclick()
        view = page.locator(".caia-review")
        expect(view.locator(".caia-review-id")).to_have_text(built.short_id)
        expect(view.locator(".caia-review-site")).to_have_text("site-1")
        expect(view.locator(".caia-review-key")).to_have_text(key_id(load_private_key(site_1.reviewer_key).public_key()))
        expect(view.locator(".caia-review-capabilities h3")).to_have_text("What the code can do")
        expect(view.locator(".caia-review-capabilities")).to_contain_text("nothing beyond computing with ctx")
        changes = view.locator(".caia-review-changes")
        expect(changes.locator("h3")).to_contain_text(f"Changed since this site approved {lab['earlier'].short_id}")
        expect(changes.locator("h4")).to_have_text(["federated cell 4: changed"])  # train's cell, and nothing else
        expect(changes.locator(".caia-diff-del")).to_have_text([f"-    generator = torch.Generator().{EDITED[1]}"])
        expect(changes.locator(".caia-diff-add")).to_have_text([f"+    generator = torch.Generator().{EDITED[0]}"])
        frame = view.locator("iframe.caia-review-page")
        assert frame.get_attribute("sandbox") == ""
        expect(page.frame_locator("iframe.caia-review-page").locator("h1")).to_contain_text(f"Review of bundle {built.id}")
        release = view.locator('select[data-caia-dataset="breast_cancer"]')
        expect(release).to_have_value("breast_cancer")  # the catalog's dataset of the requested name
        expect(view.locator(".caia-review-reject")).to_be_disabled()  # a rejection needs its reason
        approve = view.locator(".caia-review-approve")
        expect(approve).to_be_enabled()
        view.locator(".caia-review-expiry").fill("3")
        approve.click()
        expect(view.locator(".caia-review-result")).to_contain_text(f"approved {built.short_id} at site-1", timeout=120_000)
        expect(approve).to_be_enabled()  # done: no longer busy
        page.screenshot(path=str(SCREENSHOT))
    assert sorted(p.name for p in lab["root"].iterdir() if not p.name.startswith(".")) == ["example-bundle", "example.zip", "socket-bundle"]
    approval, reasons = find_approval(site_1.site, built.id, {"breast_cancer"})
    assert approval is not None and approval.datasets == {"breast_cancer": "breast_cancer"}, reasons
    assert approval.expires_at - approval.issued_at == timedelta(days=3)

    for center in lab["centers"][1:]:
        signing.approve(center.site, built.id, {"breast_cancer": "breast_cancer"}, center.reviewer_key, bundle=built)
    run = submit(built.path, [str(c.site.path) for c in lab["centers"]], runs_root=lab["base"] / "runs",
                 relative_to=lab["base"])
    assert run.wait(timeout=900) == "finished", run.message
    assert run.refusals == {} and run.sites["site-1"] == "done", (run.sites, run.refusals)

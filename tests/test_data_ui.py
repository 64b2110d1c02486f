"""The Federated panel's Data section in JupyterLab, in headless Chromium: the example notebook with a
`%federated explore` request, whose statistics bundle the three demo sites approved and ran on the
NVFLARE simulator beforehand; the panel shows that exploration's tables and histograms."""

import json
import shutil

import nbformat
import pytest

from caia_jupyter.researcher.explore import PARTIAL, statistics_bundle
from caia_jupyter.reviewer import signing
from caia_jupyter.targets.demo_sites import make_sites
from caia_jupyter.targets.explore import explore
from browser_fixtures import NOTEBOOK, running_lab
from conftest import REPO
from test_ui import open_panel

pytestmark = pytest.mark.slow
expect = pytest.importorskip("playwright.sync_api").expect
SCREENSHOT = REPO / "labextension" / "panel-data.png"
REQUEST = ("%federated explore dataset=breast_cancer:samples/breast_cancer_sample.csv 'columns=mean radius,mean texture' "
           "'histograms=mean radius:8:8:20,mean texture:8:10:26' min_clients=3")


@pytest.fixture(scope="module")
def data_lab(tmp_path_factory):
    """A lab root with the example notebook (plus its request), its samples, the demo sites, and one
    finished exploration in runs/ beside the notebook."""
    base = tmp_path_factory.mktemp("data-lab")
    root = base / "root"
    root.mkdir()
    shutil.copytree(REPO / "example_notebooks" / "samples", root / "samples")
    notebook = nbformat.read(REPO / "example_notebooks" / NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(REQUEST))
    nbformat.write(notebook, root / NOTEBOOK)
    centers = make_sites(root / "sites")
    bundle = statistics_bundle(root / NOTEBOOK)
    for center in centers:
        signing.approve(center.site, bundle.id, {"breast_cancer": "breast_cancer"}, center.reviewer_key, bundle=bundle)
    result, run = explore(root / NOTEBOOK, [c.site.path for c in centers], root / "runs")
    assert result is not None, run.message
    yield from running_lab(base, root, result=result, run=run)


def test_the_data_section_shows_the_last_exploration(browser, data_lab):
    lab, result = data_lab, data_lab["result"]
    pooled = result.table("count").loc[("breast_cancer", "mean radius"), "pooled"]
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?reset&token={lab['token']}")
        page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(state="attached")
        panel = open_panel(page)
        data = panel.locator('[data-caia="data"]')
        expect(data).to_be_visible()
        expect(data.locator('[data-caia="data-run"]')).to_have_text(lab["run"].path.relative_to(lab["root"]).as_posix())
        table = data.locator('table[data-caia-column="mean radius"]')
        expect(table.locator('tr[data-site="pooled"] td').first).to_have_text(str(pooled))
        for site in result.sites:
            count = result.table("count").loc[("breast_cancer", "mean radius"), site]
            expect(table.locator(f'tr[data-site="{site}"] td').first).to_have_text(str(count))
        histogram = data.locator('.caia-chart[data-metric="mean radius"]')
        expect(histogram.locator("canvas")).to_be_visible()
        drawn = histogram.get_attribute("data-series")
        bins = result.histogram("mean radius")["pooled"]  # a partial bin (some site suppressed its part) is a gap
        assert drawn and json.loads(drawn)["pooled"] == [None if n == PARTIAL else n for n in bins]
        assert sum(n for n in json.loads(drawn)["pooled"] if n is not None) <= pooled
        expect(data.locator('.caia-chart[data-metric="mean texture"] canvas')).to_be_visible()
        data.locator('[data-caia="suppressed"]').scroll_into_view_if_needed()
        page.screenshot(path=str(SCREENSHOT))
        data.locator("summary").click()  # collapsible
        expect(table).to_be_hidden()
    finally:
        context.close()

"""The run widget in a notebook's output, in JupyterLab in headless Chromium: the charts of
labextension/src/chart.ts (the panel's too) with integer round ticks, several value ticks, a legend
of the sites and the global line, the final round marked; redrawn in place when the run's records
grow; recolored when the theme changes. The run folder is written by hand (as in test_widgets.py):
the view is under test, with a real kernel, anywidget and JupyterLab."""

import json

import nbformat
import pytest

from browser_fixtures import ARTIFACTS
from test_widgets import append, finish

pytestmark = pytest.mark.slow
expect = pytest.importorskip("playwright.sync_api").expect
WIDGET_NOTEBOOK = "widget.ipynb"


def recorded_run(root):
    run = root / "runs" / "recorded"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"sites": {"site-1": "/s1", "site-2": "/s2"}, "rounds": 4,
                                              "min_clients": 1, "bundle_id": "sha256:" + "ab" * 32,
                                              "target": "simulator"}))
    (run / "sites.json").write_text(json.dumps({"site-1": {"state": "approved"}, "site-2": {"state": "approved"}}))
    (run / "status.json").write_text(json.dumps({"phase": "training", "rounds_done": 2, "rounds": 4,
                                                 "sites": ["site-1", "site-2"]}))
    append(run, *[(site, r, name, 0.5 + r / 10 + (site == "site-2") / 20)
                  for r in range(2) for site in ("site-1", "site-2") for name in ("accuracy", "loss")])
    finish(run)
    return run


@pytest.fixture(scope="module")
def page(browser, lab):
    run = recorded_run(lab["root"])
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import traitlets\n"
            "from caia_jupyter.kernel.widgets import RunWidget\n"
            "from caia_jupyter.researcher.runs import Run\n"
            f"w = RunWidget(Run({str(run)!r}))\n"
            "if not w.has_trait('global_records'):  # the view reads them when the Python side syncs them\n"
            "    w.add_traits(global_records=traitlets.List().tag(sync=True),\n"
            "                 final_round=traitlets.Any(None).tag(sync=True))\n"
            "w.refresh()\n"
            "w.global_records, w.final_round = [[0, 'accuracy', 0.52], [1, 'accuracy', 0.62]], 1\n"
            "w"),
        nbformat.v4.new_code_cell("w.refresh()\nw.global_records = w.global_records + [[2, 'accuracy', 0.72]]\n"
                                  "w.final_round = 2"),
    ]
    nbformat.write(notebook, lab["root"] / WIDGET_NOTEBOOK)
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{lab['url']}/lab/tree/{WIDGET_NOTEBOOK}?reset&token={lab['token']}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(state="attached")
    expect(page.locator(".jp-StatusBar-Widget", has_text="| Idle").first).to_be_visible()  # the kernel is up
    page.run = run
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "widget-final.png"))
        context.close()


def run_cell(page, index):
    cell = page.locator(".jp-NotebookPanel .jp-CodeCell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    return cell


def series(chart):
    return json.loads(chart.get_attribute("data-series"))


def test_the_widget_charts_have_round_ticks_a_legend_the_global_line_and_the_final_round(page):
    cell = run_cell(page, 0)
    widget = cell.locator(".caia-run")
    expect(widget.locator(".caia-head")).to_contain_text("finished", timeout=120_000)
    accuracy = widget.locator('.caia-chart[data-metric="accuracy"]')
    expect(widget.locator(".caia-chart")).to_have_count(2)  # accuracy and loss; num_samples is no curve
    expect(accuracy).to_have_attribute("data-legend", '["site-1","site-2","global"]')
    expect(widget.locator('.caia-chart[data-metric="loss"]')).to_have_attribute("data-legend", '["site-1","site-2"]')
    assert json.loads(accuracy.get_attribute("data-x-ticks")) == [0, 1, 2, 3]  # rounds 0..3 of 4, integers
    assert int(accuracy.get_attribute("data-y-ticks")) >= 3
    assert series(accuracy) == {"site-1": [[0, 0.5], [1, 0.6]], "site-2": [[0, 0.55], [1, 0.65]],
                                "global": [[0, 0.52], [1, 0.62]]}
    expect(accuracy).to_have_attribute("data-final-round", "1")
    box = accuracy.locator("canvas").bounding_box()
    assert box["width"] > 200 and box["height"] > 100  # sized by its container, not a fixed 250x140
    ARTIFACTS.mkdir(exist_ok=True)
    widget.screenshot(path=str(ARTIFACTS / "widget-charts.png"))


def test_the_widget_redraws_in_place_when_the_run_grows(page):
    accuracy = page.locator('.caia-run .caia-chart[data-metric="accuracy"]')
    accuracy.locator("canvas").evaluate("canvas => { canvas.caiaMark = true; }")
    append(page.run, ("site-1", 2, "accuracy", 0.7), ("site-2", 2, "accuracy", 0.75))
    run_cell(page, 1)
    expect(accuracy).to_have_attribute("data-final-round", "2")
    assert series(accuracy)["site-1"][-1] == [2, 0.7] and series(accuracy)["global"][-1] == [2, 0.72]
    assert accuracy.locator("canvas").evaluate("canvas => canvas.caiaMark === true")  # the same canvas, updated


def test_the_charts_follow_the_theme(page):
    accuracy = page.locator('.caia-run .caia-chart[data-metric="accuracy"]')
    light = json.loads(accuracy.get_attribute("data-colors"))
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
    page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel").get_by_text("JupyterLab Dark", exact=True).click()
    expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
    expect(accuracy).not_to_have_attribute("data-colors", json.dumps(light, separators=(",", ":")))
    dark = json.loads(accuracy.get_attribute("data-colors"))
    assert dark[:2] == ["#64b5f6", "#ef5350"]  # style/chart.css: the dark theme's site-0 and site-1
    assert light[:2] == ["#1565c0", "#c62828"]
    page.screenshot(path=str(ARTIFACTS / "widget-dark.png"))

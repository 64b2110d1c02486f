"""JupyterLab in headless Chromium (Debian's package, driven by Playwright), sidebar at its default
width: the example notebook's federated cells are marked (never a markdown cell), the Federated
panel shows the CLI's bundle id, validates, follows a simulator run whose per-site curves fill while
it runs, keeps the approval lifecycle live (an edit shows what changed and Submit refuses the
unvalidated id; an approval made outside JupyterLab shows without a save), runs one action at a
time, lists runs across a reload, aborts a run, shows accurate per-site states of a run with a
failing site and of a refused run, reads in the light and dark themes (contrast at least 4.5:1),
and a differential privacy run's epsilon per site. Screenshots go to test-artifacts/."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from caia_jupyter.researcher import bundle
from caia_jupyter.reviewer import signing
from browser_fixtures import ARTIFACTS, DP_NOTEBOOK, NOTEBOOK

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def page(browser, lab):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?reset&token={lab['token']}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(state="attached")
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "lab-final.png"))
        context.close()


def open_panel(page):
    panel = page.locator("#caia-federated-panel")
    if not panel.is_visible():
        page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="caia-federated-panel"]').click()
    expect(panel).to_be_visible()
    return panel


def lab_app(page, script: str, *args):
    """Run `script` (an async function body) with `app` (JupyterLab, exposed) and `nb` (the notebook
    panel of NOTEBOOK) in scope; `args` as `args`."""
    return page.evaluate("""async ([script, path, args]) => {
        const app = window.jupyterapp;
        const nb = [...app.shell.widgets('main')].find(w => w.context && w.context.path === path);
        return await (new Function('app', 'nb', 'args', `return (async () => { ${script} })()`))(app, nb, args);
    }""", [script, NOTEBOOK, list(args)])


def set_cell(page, index: int, source: str) -> None:
    """Write cell `index` of NOTEBOOK and save it."""
    lab_app(page, "nb.content.model.cells.get(args[0]).sharedModel.setSource(args[1]); await nb.context.save();",
            index, source)


def cell_source(page, index: int) -> str:
    return lab_app(page, "return nb.content.model.cells.get(args[0]).sharedModel.getSource();", index)


def full_id(panel) -> str:
    return panel.locator('[data-caia="bundle-id"]').get_attribute("title")


def approve_everywhere(lab, bundle_id: str) -> None:
    for center in lab["centers"]:
        signing.approve(center.site, bundle_id, {"breast_cancer": "breast_cancer"}, center.reviewer_key)


def count_posts(page, endpoint: str) -> list:
    """The POSTs to /caia/api/`endpoint` the page makes from now on."""
    seen = []
    page.on("request", lambda r: r.method == "POST" and r.url.split("?")[0].endswith(f"/caia/api/{endpoint}") and seen.append(r))
    return seen


def run_rows(panel):
    return panel.locator('[data-caia="runs"] [data-run]')


CONTRAST = """([selector, pseudo]) => {
    const channels = c => c.match(/[\\d.]+/g).map(Number);
    const luminance = c => {
        const [r, g, b] = channels(c).slice(0, 3).map(v => v / 255).map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const background = node => {
        for (let e = node; e; e = e.parentElement) {
            const c = channels(getComputedStyle(e).backgroundColor);
            if (c.length === 3 || c[3] > 0.5) return getComputedStyle(e).backgroundColor;
        }
        return 'rgb(255, 255, 255)';
    };
    return [...document.querySelectorAll(selector)].map(node => {
        const [a, b] = [luminance(getComputedStyle(node, pseudo).color), luminance(background(node))];
        return [node.textContent.slice(0, 40), (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
    });
}"""


def assert_readable(page, theme: str) -> None:
    """Labels and states at least 4.5:1 against their background; nothing in the panel cut off."""
    checks = [(".jp-Cell.caia-federated-cell .jp-InputPrompt", "::after"), ("#caia-federated-panel .caia-state", None),
              ("#caia-federated-panel .caia-reason", None), ("#caia-federated-panel .caia-message", None)]
    for selector, pseudo in checks:
        measured = page.evaluate(CONTRAST, [selector, pseudo])
        assert measured, selector
        low = [(text, round(ratio, 2)) for text, ratio in measured if ratio < 4.5]
        assert not low, f"{theme}: {selector} below 4.5:1: {low}"
    cut = page.evaluate("""() => {
        const panel = document.querySelector('#caia-federated-panel');
        const nodes = [panel, ...panel.querySelectorAll('.caia-reason, .caia-site-name, [data-caia="headline"], [data-caia="approve-command"]')];
        return nodes.filter(n => n.scrollWidth > n.clientWidth + 1).map(n => n.className + ': ' + n.textContent.slice(0, 40));
    }""")
    assert not cut, f"{theme}: cut off at the default sidebar width: {cut}"


def set_theme(page, theme: str) -> None:
    page.evaluate("name => window.jupyterapp.commands.execute('apputils:change-theme', {theme: name})", theme)
    light = "true" if theme == "JupyterLab Light" else "false"
    page.wait_for_selector(f'body[data-jp-theme-light="{light}"]', state="attached")
    page.wait_for_timeout(500)  # the theme's stylesheet applies


def shoot(panel, name: str) -> None:
    """A screenshot of the whole panel at its default width: the page made tall enough for it."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = panel.page
    size = page.viewport_size
    height = panel.evaluate("p => p.scrollHeight") + 120
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    page.wait_for_timeout(300)  # the charts resize
    panel.screenshot(path=str(ARTIFACTS / name))
    page.set_viewport_size(size)


def test_federated_cells_are_marked(page):
    marked = page.locator(".jp-NotebookPanel .jp-Cell.caia-federated-cell")
    expect(marked).to_have_count(5)
    expect(marked.first).to_contain_text("%%federated dataset=breast_cancer")
    expect(page.locator(".jp-NotebookPanel .jp-CodeCell:not(.caia-federated-cell)").first).to_contain_text("%load_ext")


def test_a_markdown_cell_cannot_be_federated(page):
    before = cell_source(page, 0)
    lab_app(page, "nb.content.activeCellIndex = 0; await app.commands.execute('caia:toggle-federated');")
    assert cell_source(page, 0) == before
    expect(page.locator(".jp-NotebookPanel .jp-MarkdownCell.caia-federated-cell")).to_have_count(0)
    expect(page.locator(".jp-toast-message", has_text="Only code cells can be federated")).to_be_visible()


def test_the_panel_shows_the_bundle_id_the_cli_prints(page, lab):
    panel = open_panel(page)
    printed = subprocess.run([str(Path(sys.executable).with_name("caia")), "bundle", str(lab["root"] / NOTEBOOK)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    expect(panel.locator('[data-caia="bundle-id"]')).to_have_attribute("title", printed)
    expect(panel.locator('[data-caia="bundle-id"]')).to_have_text(printed.removeprefix("sha256:")[:12])
    panel.locator('[data-caia-copy="the full bundle id"]').click()
    assert page.evaluate("navigator.clipboard.readText()") == printed
    expect(panel.locator('[data-caia="cells"] li')).to_have_count(5)
    expect(panel.locator('[data-caia="sites"] [data-site]')).to_have_count(3)


def test_validation_from_the_panel_runs_once_however_often_clicked(page):
    panel = open_panel(page)
    posts = count_posts(page, "validate")
    validate = panel.locator('[data-caia-action="validate"]')
    validate.dblclick()
    expect(validate).to_be_disabled()
    expect(validate).to_have_text("validating…")
    toolbar = page.locator('.jp-NotebookPanel-toolbar').first
    expect(toolbar.locator('[data-jp-item-name="caia-validate"]')).to_contain_text("validating…")
    assert toolbar.locator('[data-jp-item-name="caia-submit"] [data-command="caia:submit"]').evaluate("b => b.disabled")
    expect(panel.locator('[data-caia="validation"]')).to_contain_text("passed", timeout=120_000)
    expect(panel.locator('[data-caia="message"]')).to_have_text("validation passed")
    expect(validate).to_be_enabled()
    assert len(posts) == 1
    expect(panel.locator('[data-caia="validation"]')).to_have_count(1)  # drawn once


def test_a_simulator_run_fills_the_charts_live(page, lab):
    panel = open_panel(page)
    bundle_id = full_id(panel)
    approve_everywhere(lab, bundle_id)
    posts = count_posts(page, "runs")
    panel.locator('[data-caia-action="submit"]').dblclick()
    # While the run is going: a curve per site, each with a few rounds already drawn.
    page.wait_for_function("""() => {
        const panel = document.querySelector('#caia-federated-panel');
        const running = panel.querySelector('[data-caia="run-status"][data-status="running"]');
        const chart = panel.querySelector('.caia-chart[data-metric="accuracy"]');
        const series = chart ? JSON.parse(chart.dataset.series) : {};
        const lines = Object.entries(series).filter(([name]) => name !== 'global').map(([, points]) => points);
        return running && lines.length === 3 && lines.every(points => points.length >= 3);
    }""", timeout=180_000)
    assert len(posts) == 1  # one run, however often Submit was clicked
    expect(panel.locator('[data-caia="run-id"]')).to_have_text(bundle_id.removeprefix("sha256:")[:12])
    assert_readable(page, "light")
    shoot(panel, "panel-live-run.png")
    shoot(panel, "panel-light-running.png")
    page.screenshot(path=str(ARTIFACTS / "lab-live-run.png"))
    expect(panel.locator('[data-caia="run-status"]')).to_have_attribute("data-status", "finished", timeout=300_000)
    expect(panel.locator('[data-caia="run-sites"] [data-site]')).to_have_count(3)
    for site in ("site-1", "site-2", "site-3"):
        row = panel.locator(f'[data-caia="run-sites"] [data-site="{site}"]')
        expect(row).to_contain_text("done")
        expect(row).to_have_attribute("data-tone", "ok")
    expect(run_rows(panel)).to_have_count(1)
    expect(run_rows(panel).first.locator('[data-caia="run-row-status"]')).to_have_text("finished")
    low, high = json.loads(panel.locator('.caia-chart[data-metric="accuracy"]').get_attribute("data-y-range"))
    assert 0 <= low < high <= 1  # the y axis ends at the data's nice bounds, not padded beyond 1
    assert_readable(page, "light")
    shoot(panel, "panel-finished-run.png")
    shoot(panel, "panel-light-finished.png")
    assert bundle.load(lab["root"] / "bundles" / "01_breast_cancer").id == bundle_id


TRAIN = 11  # the notebook's train cell
STOP = '    assert ctx.round > 99, "stopped"'  # fails validation, at line 3 of the cell in the editor
ONE_SITE_FAILS = '    assert ctx.site != "site-3" or ctx.round < 1, "site-3 stops"'  # validates; site-3 fails in round 1


def with_line(source: str, line: str) -> str:
    lines = source.split("\n")
    return "\n".join(lines[:2] + [line] + lines[2:])


def test_an_edit_shows_what_changed_and_submit_refuses_the_unvalidated_id(page, lab):
    panel = open_panel(page)
    approved = full_id(panel)
    runs = run_rows(panel).count()
    set_cell(page, TRAIN, with_line(cell_source(page, TRAIN), STOP))
    expect(panel.locator('[data-caia="bundle-id"]')).not_to_have_attribute("title", approved)
    expect(panel.locator('[data-caia="validation"]')).to_have_attribute("data-state", "none")
    changes = panel.locator('[data-caia="changes"]')
    expect(changes).to_contain_text("Changed since the version sites approved")
    expect(changes).to_contain_text(approved.removeprefix("sha256:")[:12])
    expect(changes.locator("li").first).to_be_visible()
    for site in ("site-1", "site-2", "site-3"):
        row = panel.locator(f'[data-caia="sites"] [data-site="{site}"]')
        expect(row.locator('[data-caia="approval"]')).to_have_text("older version")  # the detail names it, once
        expect(row.locator('[data-caia="approve-command"]')).to_contain_text(f"--site sites/{site}")
    expect(panel.locator('[data-caia="submit-reason"]')).not_to_be_empty()
    panel.locator('[data-caia-action="submit"]').click()
    message = panel.locator('[data-caia="message"].caia-error')
    expect(message).not_to_be_empty(timeout=60_000)
    assert "\n" not in message.inner_text()
    expect(panel.locator('[data-caia="submit-reason"]')).to_be_hidden()  # the refusal is said once, above
    page.wait_for_timeout(1000)
    expect(run_rows(panel)).to_have_count(runs)  # nothing started
    assert_readable(page, "light")


def test_a_validation_error_leads_to_the_cell_and_line(page):
    panel = open_panel(page)
    panel.locator('[data-caia-action="validate"]').click()
    expect(panel.locator('[data-caia="validation"]')).to_have_text("validating…")  # not the last outcome while it runs
    failed = panel.locator('[data-caia="validation"].caia-failed')
    expect(failed).to_contain_text(f"cell {TRAIN + 1}, line 3", timeout=120_000)
    failed.click()
    page.wait_for_function(f"""() => {{
        const nb = [...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === '{NOTEBOOK}');
        const editor = nb.content.activeCell.editor;
        return nb.content.activeCellIndex === {TRAIN} && editor.getCursorPosition().line === 2
            && editor.hasFocus();
    }}""")


def test_an_approval_made_outside_jupyterlab_shows_without_a_save(page, lab):
    panel = open_panel(page)
    set_cell(page, TRAIN, cell_source(page, TRAIN).replace(STOP, ONE_SITE_FAILS))
    expect(panel.locator('[data-caia="validation"]')).to_have_attribute("data-state", "none")
    panel.locator('[data-caia-action="validate"]').click()
    expect(panel.locator('[data-caia="validation"]')).to_contain_text("passed", timeout=120_000)
    bundle_id = full_id(panel)
    approve_everywhere(lab, bundle_id)  # as a reviewer would, in a terminal
    for site in ("site-1", "site-2", "site-3"):
        expect(panel.locator(f'[data-caia="sites"] [data-site="{site}"] [data-caia="approval"]')).to_have_text("approved", timeout=15_000)
    expect(panel.locator('[data-caia="changes"]')).to_have_count(0)
    expect(panel.locator('[data-caia="submit-reason"]')).to_be_empty()
    expect(panel.locator('[data-caia="message"]')).to_be_empty()  # the old message went with the old state


def test_a_run_with_a_failing_site_in_the_dark_theme(page, lab):
    panel = open_panel(page)
    set_theme(page, "JupyterLab Dark")
    bundle_id = full_id(panel)
    panel.locator('[data-caia-action="submit"]').click()
    expect(panel.locator('[data-caia="run-id"]')).to_have_text(bundle_id.removeprefix("sha256:")[:12], timeout=60_000)
    expect(panel.locator('[data-caia="run-status"][data-status="running"]')).to_be_visible(timeout=180_000)
    assert_readable(page, "dark")
    shoot(panel, "panel-dark-running.png")
    expect(panel.locator('[data-caia="run-status"]')).to_have_attribute("data-status", "finished", timeout=300_000)
    failing = panel.locator('[data-caia="run-sites"] [data-site="site-3"]')
    expect(failing).to_have_attribute("data-tone", "bad")
    expect(failing).to_contain_text("failed")
    expect(failing.locator(".caia-reason")).to_contain_text("train")
    for site in ("site-1", "site-2"):
        expect(panel.locator(f'[data-caia="run-sites"] [data-site="{site}"]')).to_have_attribute("data-tone", "ok")
    # the state's colour follows its tone; the chart colour is a legend key, never a status dot
    color = "s => getComputedStyle(s).color"
    state = '[data-caia="site-state"]'
    bad = failing.locator(f"{state}.caia-tone-bad").evaluate(color)
    assert panel.locator(f'[data-caia="run-sites"] [data-site="site-1"] {state}').evaluate(color) != bad
    assert panel.locator(f'[data-caia="run-sites"] [data-site="site-2"] {state}').evaluate(color) != bad
    key = failing.locator(".caia-swatch")
    expect(key).to_have_text("—")
    expect(key).to_have_attribute("title", "chart colour of site-3")
    expect(panel.locator('[data-caia="headline"]')).to_contain_text("continued without site-3")
    expect(run_rows(panel).first.locator('[data-caia="run-row-status"]')).to_have_text("finished")
    assert_readable(page, "dark")
    shoot(panel, "panel-dark-finished.png")


def test_abort_stops_a_run(page, lab):
    panel = open_panel(page)
    runs = run_rows(panel).count()
    panel.locator('[data-caia-action="submit"]').click()
    expect(panel.locator('[data-caia="run-status"][data-status="running"]')).to_be_visible(timeout=180_000)
    panel.locator('[data-caia-action="abort"]').click()
    expect(panel.locator('[data-caia="run-status"]')).to_have_attribute("data-status", "aborted", timeout=120_000)
    expect(panel.locator('[data-caia-action="abort"]')).to_have_count(0)
    expect(run_rows(panel)).to_have_count(runs + 1)
    expect(run_rows(panel).first.locator('[data-caia="run-row-status"]')).to_have_text("aborted")


def test_a_refused_run_shows_the_refusing_sites_and_the_list_survives_a_reload(page, lab):
    """site-1 admits; two sites without an approval refuse; min_clients 2 is not met."""
    from caia_jupyter.targets.demo_sites import make_sites as make
    from caia_jupyter.targets.submit import submit

    extra = make(lab["base"] / "extra", count=5)
    root = lab["root"]
    run = submit(root / "bundles" / "01_breast_cancer", [lab["centers"][0].site.path, extra[3].site.path, extra[4].site.path],
                 runs_root=root / "runs")
    assert run.wait(timeout=300) == "refused"
    page.reload()
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(state="attached")
    panel = open_panel(page)
    rows = run_rows(panel)
    expect(rows).to_have_count(4, timeout=30_000)  # the finished, failing-site, aborted and refused runs
    expect(rows.first.locator('[data-caia="run-row-status"]')).to_have_text("refused")
    expect(panel.locator('[data-caia="runs"] [data-caia="global"]').first).to_contain_text("accuracy")
    rows.first.click()
    expect(panel.locator('[data-caia="run-status"]')).to_have_attribute("data-status", "refused")
    expect(panel.locator('[data-caia="run-sites"] [data-site="site-1"]')).to_have_attribute("data-tone", "neutral")
    for site in ("site-4", "site-5"):
        row = panel.locator(f'[data-caia="run-sites"] [data-site="{site}"]')
        expect(row).to_have_attribute("data-tone", "bad")
        expect(row).to_contain_text("refused")
    assert_readable(page, "dark")
    set_theme(page, "JupyterLab Light")
    assert_readable(page, "light")


def test_a_dp_run_charts_the_epsilon_each_site_spent(page, lab):
    page.goto(f"{lab['url']}/lab/tree/{DP_NOTEBOOK}?token={lab['token']}")
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(notebook.locator(".jp-Cell.caia-federated-cell").first).to_contain_text("privacy=dp", timeout=60_000)
    panel = open_panel(page)
    panel.locator('[data-caia-action="validate"]').click()
    expect(panel.locator('[data-caia="validation"]')).to_contain_text("passed", timeout=120_000)
    bundle_id = full_id(panel)
    assert bundle.load(lab["root"] / "bundles" / "02_breast_cancer_dp").manifest["job"]["privacy"]["epsilon"] == 3
    for center in lab["centers"]:
        signing.approve(center.site, bundle_id, {"breast_cancer": "breast_cancer"}, center.reviewer_key)
    notebook.first.click()
    open_panel(page)
    panel.locator('[data-caia-action="submit"]').click()
    expect(panel.locator('[data-caia="run-status"][data-status="finished"]')).to_be_visible(timeout=300_000)
    for metric in ("epsilon", "accuracy"):  # one curve per site, epsilon next to accuracy
        chart = panel.locator(f'.caia-chart[data-metric="{metric}"]')
        assert set(json.loads(chart.get_attribute("data-series"))) - {"global"} == {"site-1", "site-2", "site-3"}
    panel.screenshot(path=str(ARTIFACTS / "panel-dp-run.png"))

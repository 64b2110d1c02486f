"""The review page in headless Chromium (Debian's package, driven by Playwright), opened as a file
and as JupyterLab opens it from the panel: every request is recorded and only the page itself may be
requested (a reviewer's machine may be offline); caia's headings and tables are elements, no tag shows
as text, and the researcher's HTML stays inert text."""

import json
import re
import urllib.request

import pytest

from caia_jupyter.researcher import compose
from caia_jupyter.reviewer import review
from browser_fixtures import NOTEBOOK
from conftest import REPO

pytestmark = pytest.mark.slow
sync_api = pytest.importorskip("playwright.sync_api")
HOSTILE = "<h1>planted</h1><script>window.caiaRan = 1</script><img src=https://cdn.example/x.png>"
RAW_TAG = re.compile(r"<\s*/?\s*(h[1-6]|p|thead|tbody|table|tr|td|th|code|pre|div|span|ul|li|a|em|strong)\b[^<]*>", re.I)


def recorded(context) -> list[str]:
    """Every URL the context requests, in order; each request is let through."""
    urls = []

    def record(route):
        urls.append(route.request.url)
        route.continue_()

    context.route("**/*", record)
    return urls


def check_page(frame, hostile: bool) -> None:
    """The review as read: caia's structure rendered as elements, no tag written as text, no script ran."""
    text = frame.inner_text("body")
    assert not RAW_TAG.search(text.replace(HOSTILE, "")), RAW_TAG.search(text.replace(HOSTILE, ""))
    assert frame.locator("h1").count() == 1 and "Review of bundle sha256:" in frame.locator("h1").inner_text()
    assert frame.locator("h2").count() >= 5 and frame.locator("table thead th").count() >= 4
    assert frame.locator("pre").count() >= 5  # the files, highlighted
    assert "def train(" in text and "ClientAPIExecutor" in text
    if hostile:
        assert HOSTILE in text  # the researcher's notes: shown, as text
        assert frame.evaluate("() => window.caiaRan") is None


@pytest.fixture(scope="module")
def example_review(tmp_path_factory):
    """review.html of the example bundle, its researcher notes holding a heading, a script and a remote image."""
    built = compose.build(REPO / "example_notebooks" / NOTEBOOK, tmp_path_factory.mktemp("review") / "b")
    record = json.loads((built.records / "build.json").read_text())
    record["cells"][0]["intro"] = HOSTILE
    (built.records / "build.json").write_text(json.dumps(record))
    return review.render(built.path)


def test_the_review_file_reads_offline(browser, example_review):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        urls = recorded(context)
        page = context.new_page()
        url = example_review.as_uri()
        page.goto(url)
        page.wait_for_load_state("load")
        check_page(page, hostile=True)
        assert urls == [url]
    finally:
        context.close()


def test_the_review_as_jupyterlab_opens_it_from_the_panel(browser, lab):
    """The panel's Review posts to /caia/api/review and opens the page with docmanager:open: JupyterLab's
    HTML viewer. Nothing but the lab's own server is asked for anything."""
    request = urllib.request.Request(
        f"{lab['url']}/caia/api/review?token={lab['token']}", data=json.dumps({"path": NOTEBOOK}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as reply:
        path = json.load(reply)["review"]
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        urls = recorded(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{lab['url']}/lab/tree/{path}?reset&token={lab['token']}")
        viewer = page.locator(".jp-HTMLViewer iframe")
        viewer.wait_for(state="attached")
        frame = viewer.element_handle().content_frame()
        frame.locator("h1").wait_for()
        check_page(frame, hostile=False)
        assert [u for u in urls if not u.startswith((lab["url"], "blob:", "data:"))] == []
    finally:
        context.close()

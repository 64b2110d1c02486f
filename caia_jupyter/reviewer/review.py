"""What a site's reviewer reads before signing: every file of the bundle, rendered with nbconvert.

Only an intact bundle is reviewed: exactly caia's file set (`fileset`), caia's own runner and
client config, and source Python reads as a person does (`sourcecheck`). The review is made
from those files alone, each read once and checked against the manifest, and it shows all of
them: the federated module split at its cell markers with Python's tokenizer (every byte
appears), the site runner, the NVFLARE client config with what it configures, the requirements,
and captured values by Python name, type, value, size and sha256. The page is one self-contained
file that reads offline: its style inline, no script, nothing loaded from elsewhere (a content
security policy says so to the browser), no template or configuration taken from the machine;
long lines wrap, so nothing hides past the right edge.

The review opens with what the code can do beyond computing and `ctx` (`capabilities`): advice
read from the syntax tree, not a gate.

The review states the protection the bundle requests (differential privacy, encryption of the
updates, weight differences) and, rendered for a site, that site's privacy ceiling and whether
its guard would admit the request.

The researcher's notes and the validation result come from records/, which nothing hashes:
they are labelled as not covered by the bundle id and shown as plain text, never as markup.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..contracts.captured import load as load_captured
from ..contracts.errors import BundleError, SiteError
from ..contracts.fileset import CLIENT_CONFIG, MODULE, REQUIREMENTS, RUNNER_FILE, is_statistics, role_of
from ..contracts.fsutil import write_atomic
from ..contracts.privacy import DifferentialPrivacy, exact
from ..contracts.sourcecheck import reveal
from ..contracts.standard import read_standard
from ..contracts.version import __version__
from ..researcher.bundle import Bundle, require_intact
from ..researcher.wording import plural
from ..site.guard import Unfit, policy_fit, privacy_ceiling
from ..site.sites import Site
from .capabilities import ADVICE, CAPABILITIES, Report
from .capabilities import report as capability_report
from .changes import Changes, compare
from .parts import split_module

CLIENT_API_EXECUTOR = "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor"
MAX_SHOWN = 300  # characters of a captured value's repr
EVENT_CONVERTER = "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent"
HE_FILTERS = {  # the filters of a bundle asking for encryption=he (contracts.client_app)
    "nvflare.app_opt.he.model_decryptor.HEModelDecryptor":
        "NVFLARE's homomorphic-encryption decryptor (the bundle asks for encryption=he): it decrypts each global "
        "model the server sends, with the secret key in your site's startup kit (client_context.tenseal); at the "
        "end your site returns the final global model, decrypted, with its evaluation: the researcher's model",
    "nvflare.app_opt.he.model_encryptor.HEModelEncryptor":
        "NVFLARE's homomorphic-encryption encryptor (the bundle asks for encryption=he): it encrypts your site's "
        "update, weighted by its num_samples, before it leaves, so the server only sums ciphertexts",
}

# The page's own style: nothing is loaded from elsewhere, and long lines wrap instead of hiding past the edge.
_CSS = """
body { margin: 0; background: #fff; color: #1a1a1a; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem 2rem 4rem; }
h1, h2, h3 { line-height: 1.25; overflow-wrap: anywhere; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
a.anchor-link { margin-left: .4rem; color: #999; text-decoration: none; font-size: .8em; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
code { background: #f2f2f2; padding: 0 .2em; border-radius: 3px; overflow-wrap: anywhere; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.highlight { background: #f7f7f7; border: 1px solid #ddd; border-radius: 4px; padding: .6rem .8rem; margin: .8rem 0; }
.highlight code, pre code { background: none; padding: 0; }
table { border-collapse: collapse; margin: .8rem 0; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; overflow-wrap: anywhere; }
thead th { background: #eee; }
blockquote { margin: .5rem 0; padding: 0 1rem; border-left: 4px solid #ccc; color: #444; }
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; font-src data:"
_HTML_TAGS = ["a", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "ol",
              "p", "pre", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"]


@dataclass(frozen=True)
class Review:
    """A rendered review: `path` of the page, the intact `bundle` it shows, its capability report
    (`capabilities.report`) and, rendered for a site, what changed since that site approved the closest
    earlier bundle (`changes.compare`; None without a site or with nothing to compare)."""

    path: Path
    bundle: Bundle
    capabilities: Report
    changes: Changes | None


def render(bundle_path: str | Path, output: str | Path | None = None, site: Site | None = None) -> Path:
    """Render review.html of an intact bundle (default: records/review.html); returns its path.
    See `rendered`, which also returns what the page was made from; raises as it does."""
    return rendered(bundle_path, output, site).path


def rendered(bundle_path: str | Path, output: str | Path | None = None, site: Site | None = None) -> Review:
    """Render review.html of an intact bundle (default: records/review.html); returns the `Review`.
    With `site`, the review also shows what changed since the site approved the closest earlier bundle
    (`changes.compare`), that site's privacy ceiling (`site_ceiling`), the privacy scope it
    applies (`site_scope`) and whether its guard refuses the bundle for them (`site_refusal`).

    Raises BundleError if the bundle is not intact or holds source Python would read
    differently from what the review shows; SiteError for a site directory that is unusable (an
    unusable privacy.json is shown as the guard's refusal).
    """
    bundle = require_intact(bundle_path)
    capabilities = capability_report(bundle)
    changes = compare(bundle, site) if site is not None else None
    notebook = review_notebook(bundle, site, capabilities)
    if site is not None and not is_statistics(bundle.manifest["job"]):
        notebook.cells[2:2] = _changes_cells(changes, site) + _scope_cells(site, bundle.manifest["job"])  # after the summary and what the code can do
    page = to_html(notebook, f"Review {bundle.short_id}")
    path = write_atomic(Path(output) if output else bundle.records / "review.html", page)
    return Review(path, bundle, capabilities, changes)


def to_html(nb: nbformat.NotebookNode, title: str) -> str:
    """The review notebook as one self-contained static HTML page: its style inline, no script, nothing
    loaded from elsewhere (a content security policy forbids both), and no template or configuration
    read from the machine, so every reviewer's page is the same.

    Markdown cells are caia's own text, in which researcher-controlled values arrive already escaped
    (`_literal`); they are rendered with nbconvert's markdown renderer, then sanitized (bleach, caia's
    tags only) in case a value slipped through. Code cells are shown with pygments, which escapes them.
    """
    from html import escape

    from pygments.formatters import HtmlFormatter

    formatter = HtmlFormatter(cssclass="highlight")
    body = "\n".join(_cell_html(cell, formatter) for cell in nb.cells)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(title)}</title>\n<style>{_CSS}{formatter.get_style_defs('.highlight')}</style>\n"
        f"</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _cell_html(cell: nbformat.NotebookNode, formatter) -> str:
    """One review cell as HTML: a markdown cell rendered and sanitized, a code cell highlighted as Python."""
    import bleach
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    from pygments import highlight
    from pygments.lexers import PythonLexer

    if cell.cell_type == "markdown":
        html = markdown2html_mistune(cell.source)
        return bleach.clean(html, tags=_HTML_TAGS, attributes={"*": ["class", "id"], "a": ["href"]}, protocols=[])
    # stripnl=False: leading and trailing blank lines are bytes of the file too
    return highlight(cell.source, PythonLexer(stripnl=False, ensurenl=False), formatter)


def protection(job: dict) -> list[str]:
    """What protection a manifest's "job" requests, one line each for people: the DP request
    (`DifferentialPrivacy.describe`), encryption of the updates, weight differences, or
    ["none requested"]."""
    lines = [DifferentialPrivacy.model_validate(job["privacy"]).describe()] if job.get("privacy") else []
    if job.get("encryption") == "he-ckks":
        lines.append("updates encrypted (CKKS), the aggregator sums ciphertexts")
    if job.get("updates") == "weight_diff":
        lines.append("sites send their weights' difference from the global model, not their weights")
    return lines or ["none requested"]


def site_ceiling(site: Site, job: dict) -> str:
    """One line: `site`'s privacy ceiling and, if its guard would refuse what `job` requests, why
    (`site_refusal`; an approval signed with --max-epsilon may lower the ceiling)."""
    if site.max_epsilon is None:
        policy = (f"{site.name} requires no differential privacy; an approval signed with --max-epsilon "
                  "sets a ceiling for this bundle")
    else:
        policy = f"{site.name} requires differential privacy with epsilon at most {exact(site.max_epsilon)} (its policy)"
    refusal = site_refusal(site, job)
    return f"{policy}; its guard would refuse this bundle: {refusal}" if refusal else policy


def site_refusal(site: Site, job: dict) -> str | None:
    """Why `site`'s guard refuses a bundle whose manifest's job is `job` whatever its approval says,
    by the guard's own checks (`guard.policy_fit`: its privacy.json; `guard.privacy_ceiling`: its
    policy's ceiling), or None. The detail of an unusable privacy.json is shown: the reviewer works at the site."""
    try:
        policy_fit(site, job)
        privacy_ceiling(job, None, site.max_epsilon)
    except Unfit as e:
        return f"{e} ({e.detail})" if e.detail else str(e)
    return None


def site_scope(site: Site) -> tuple[list[str], dict | None]:
    """The privacy scope `site` applies to every job: (lines for a person, `privacy_policy.to_json`),
    or for an unusable privacy.json ([its problem], None). Never raises for a bad privacy.json."""
    from ..site.privacy_policy import describe, read_policy, to_json

    try:
        policy = read_policy(site.path)
    except SiteError as e:
        return [f"privacy scope: none usable, so its guard refuses every job: {e}"], None
    return describe(policy), to_json(policy)


def review_notebook(bundle: Bundle, site: Site | None = None, capabilities: Report | None = None) -> nbformat.NotebookNode:
    """The review as a notebook: markdown explanations and every listed file (see the module doc),
    starting with the summary and what the code can do (`capabilities`, the bundle's
    `capabilities.report`, made here when not given; advice only); with `site`, the protection part
    shows that site's ceiling.

    `bundle` is intact (see `render`). Code cells showing a file carry `metadata.caia.file`; the
    cells of federated.py, in order, concatenate back to the file exactly. Raises BundleError
    for a file that changed since it was checked.
    """
    manifest = bundle.manifest
    files = _read_listed_files(bundle)
    if is_statistics(manifest["job"]):
        return _notebook(statistics_cells(bundle, files[CLIENT_CONFIG].decode("utf-8"), site))
    opaque = {name: entry for name, entry in manifest["files"].items() if role_of(name) == "captured"}
    texts = {name: data.decode("utf-8") for name, data in files.items() if name not in opaque}
    job = manifest["job"]

    cells = [_md(
        f"# Review of bundle {_code(bundle.id)}\n\n"
        "Every file below matches `manifest.json`, and the bundle id is the sha256 of that manifest: "
        "an approval you sign covers exactly this content. This page shows every file of the bundle in full, "
        "except captured values, shown by type, value, size and sha256.\n\n"
        f"| | |\n|---|---|\n| rounds | {_code(job['rounds'])} |\n| min clients | {_code(job['min_clients'])} |\n"
        f"| hyperparameters (`ctx.params`) | {_code(json.dumps(job['params'], sort_keys=True))} |\n"
        f"| built with | caia-jupyter {_code(manifest['caia_version'])}, Python {_code(manifest['python'])} |"
    ), _capabilities_cell(capabilities or capability_report(bundle)), _md(_protection_text(job, site))]
    if opaque:
        rows = "".join(
            f"| {_code(e.get('python_name'))} | {_code(e.get('python_type'))} | {_code(_shown_value(files[name]))} "
            f"| {_code(name)} | {_literal(e['size'])} | {_code(e['sha256'])} |\n"
            for name, e in opaque.items()
        )
        cells.append(_md(
            "## Values captured from the researcher's kernel\n\n"
            "Pickles of plain values (numbers, dates, numpy scalars and dtypes, torch dtypes, a few containers): "
            "caia checked that each builds only such a value, of the type shown, and your site loads them with a "
            "loader that can call nothing else.\n\n"
            f"| Python name | type | value | file | bytes | sha256 |\n|---|---|---|---|---|---|\n{rows}"
        ))
    cells.append(_md(_datasets_text(manifest["datasets"], files)))
    cells.append(_md("## Local validation\n\n" + _validation_text(bundle.record("validation.json"), bundle.id)))
    rows = "".join(
        f"| {_code(name)} | {_literal(e['role'])}{' (opaque)' if name in opaque else ''} | {_literal(e['size'])} "
        f"| {_code(e['sha256'])} |\n"
        for name, e in manifest["files"].items()
    )
    cells.append(_md(f"## Files\n\n| file | role | bytes | sha256 |\n|---|---|---|---|\n{rows}"))

    cells += _module_cells(texts[MODULE], _intros(bundle))
    cells += _runner_cells(texts[RUNNER_FILE])
    cells += _client_config_cells(texts[CLIENT_CONFIG])
    requirements = texts[REQUIREMENTS]
    cells.append(_md(
        f"## Requirements\n\n`{REQUIREMENTS}`: the distributions the federated code imports, pinned to the versions "
        f"it was built with{' (none)' if not requirements.strip() else ''}.\n\n{_fenced(requirements, 'text')}"
    ))

    return _notebook(cells)


def _notebook(cells: list) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def statistics_cells(bundle: Bundle, config: str, site: Site | None) -> list:
    """The review of a statistics bundle: no code; exactly which statistics of which columns leave each
    site, with bins and categories, the thresholds that apply (the `site`'s own, when given), the
    datasets, the validation of the sample, and the client config in full."""
    from ..site.statistics import Thresholds, read_thresholds

    spec, job = bundle.manifest["job"]["statistics"], bundle.manifest["job"]
    asked = [s for s in spec["statistics"] if s not in ("histogram", "quantile")]
    if "mean" in asked or "stddev" in asked:
        asked.append("sum")  # NVFLARE pools means from sums
    rows = ""
    for column in spec["columns"]:
        released = list(dict.fromkeys(["count", *asked]))
        if "quantile" in spec["statistics"]:
            released.append(f"quantiles {', '.join(map(str, spec['quantiles']))} (and their t-digest)")
        histogram = spec.get("histograms", {}).get(column)
        if histogram:
            where = (f"over [{histogram['range'][0]}, {histogram['range'][1]})" if histogram.get("range") else
                     "over a range agreed across sites from each site's min and max, with noise added at the site")
            released.append(f"histogram of {histogram['bins']} bins {where}")
        rows += f"| {_code(column)} | {_literal('; '.join(released))} |\n"
    for column, categories in spec.get("categories", {}).items():
        rows += (f"| {_code(column)} | {_literal('count of rows in each declared category: ' + ', '.join(categories))}"
                 " (names from this bundle, never from your data) |\n")
    thresholds = read_thresholds(site.path) if site is not None else Thresholds()
    whose = "your site's (statistics.json)" if site is not None else "each site's own; the defaults are"
    few_missing = f", or with between 1 and {thresholds.min_count - 1} missing" if thresholds.min_count > 1 else ""
    limits = (f"- a feature with fewer than {thresholds.min_count} values{few_missing}: none of its statistics leave the "
              "site (another column's count minus its own would give the missing ones)\n"
              f"- a histogram bin or category count between 0 and {thresholds.min_count}: suppressed, with enough other "
              "bins or categories that none can be recovered by subtracting the released ones from the total "
              "(complementary suppression)\n"
              f"- min/max: {'sent with ' + str(thresholds.min_noise_level) + ' to ' + str(thresholds.max_noise_level) + ' relative noise' if thresholds.extremes else 'never sent'}\n"
              f"- a histogram is withheld unless it has fewer bins than {thresholds.max_bins_percent:g}% of the feature's "
              "values (NVFLARE's rule against a bin per patient)\n")
    record = bundle.record("validation.json") or {}
    valid = (record.get("bundle_id") == bundle.id and record.get("passed") is True)
    return [
        _md(f"# Review of statistics bundle {_code(bundle.id)}\n\n"
            "A statistics bundle holds **no code**: your site runs caia's own statistics generator under NVFLARE's "
            "statistics workflow, on the datasets you release, and NVFLARE's privacy cleansers with your site's "
            "thresholds decide what leaves. Every file below matches `manifest.json`, and the bundle id is its "
            f"sha256.\n\n| | |\n|---|---|\n| min clients | {_code(job['min_clients'])} |\n"
            f"| built with | caia-jupyter {_code(bundle.manifest['caia_version'])} |"),
        _md(f"## What leaves your site\n\nPer released dataset, computed over all its rows:\n\n"
            f"| column | statistics released |\n|---|---|\n{rows}"),
        _md(f"## Thresholds applied at the site\n\nThe thresholds are {whose}, never the bundle's:\n\n{limits}\n"
            "A withheld statistic reaches the researcher as *suppressed*."),
        _md(_datasets_text(bundle.manifest["datasets"], {})),
        _md("## Local validation\n\n" + ("**Passed**: the samples have the requested columns, numeric where described."
            if valid else "**Not validated.**") + "\n\n*Reported by the researcher's machine; not covered by the bundle id.*"),
        *_client_config_cells(config),
    ]


def _module_cells(source: str, intros: dict[int, str]) -> list:
    cells = [_md(
        "## Federated code\n\n`federated.py`, every byte of it, exactly as it runs at your site: the notebook's "
        "`%%federated` cells in order, after the values captured from the researcher's kernel."
    )]
    for part in split_module(source):
        if part.kind == "docstring":
            cells.append(_md("### Module docstring"))
        elif part.kind == "head":
            cells.append(_md(
                "### Before the first cell\n\ncaia-jupyter writes here the values captured from the researcher's "
                "kernel (and the function that loads opaque ones). Anything else here runs too."
            ))
        else:
            note = intros.get(part.ordinal, "").strip()
            cells.append(_md(f"### Federated cell {part.ordinal}" + (
                f"\n\n*The researcher's notes (not covered by the bundle id):*\n\n{_quote(note)}" if note else "")))
        cells.append(_code_cell(MODULE, part.text))
    return cells


def _runner_cells(source: str) -> list:
    return [
        _md(f"## Site runner\n\n`{RUNNER_FILE}`, the script NVFLARE runs at your site. It is, byte for byte, the runner "
            f"caia-jupyter {__version__} writes (your site's guard admits no other): it hands the federated code above "
            "to the caia runtime installed at your site."),
        _code_cell(RUNNER_FILE, source),
    ]


def _scope_cells(site: Site, job: dict) -> list:
    """The privacy scope `site` applies to every update of a job with manifest `job`
    (`site_scope`), and whether its guard refuses the bundle for it or its ceiling (`site_refusal`)."""
    refusal = site_refusal(site, job)
    sends = "its weights' difference from the global model" if job.get("updates") == "weight_diff" else "its full weights"
    lines = "\n".join(f"- {_literal(line)}" for line in site_scope(site)[0])
    return [_md(
        f"## Your site's privacy scope\n\nEach round your site sends {sends}. Before an update leaves site "
        f"{_code(site.name)}, NVFLARE applies the site's own privacy policy (`privacy.json` in the site directory), "
        f"whatever the code does:\n\n{lines}"
        + (f"\n\n⚠ Your site's guard refuses this bundle: {_literal(refusal)}." if refusal else "")
    )]


def _changes_cells(found: Changes | None, site: Site) -> list:
    """What changed since the closest bundle `site` approved before (`found`, from `changes.compare`):
    the cosmetic verdict, a diff of each part of federated.py that changed, the other changes; or
    that there is nothing to compare."""
    if found is None:
        return [_md(f"## Changed since site {_code(site.name)} approved\n\nFirst bundle this site reviews: nothing to "
                    "compare (the site's store of approved bundles, `approved/`, holds no other).")]
    changed = found.changed
    if found.cosmetic:
        verdict = ("**Cosmetic: same syntax tree; the bytes changed, so it still needs a new approval.** Only comments, "
                   "blank lines or formatting differ from the code your site approved.")
    else:
        verdict = f"**{plural(len(changed), 'part')} of the federated code changed"
        verdict += f"; {plural(len(found.other), 'other change')}.**" if found.other else ".**"
    diffs = [f"### {part.title}: {part.status}\n\n{_fenced(part.diff, 'diff')}" for part in changed]
    other = "\n".join(f"- {_literal(line)}" for line in found.other) or "None."
    return [_md(
        f"## Changed since site {_code(site.name)} approved {_code(found.base.short_id)}\n\n{verdict}\n\n"
        f"Compared with {_code(found.base.id)}, the bundle in your site's store of approved bundles whose federated "
        "code is closest to this one (the most recent approval breaks a tie). Below, each part of `federated.py` "
        "that differs, as a unified diff (`-` that bundle, `+` this one), then everything else that changed. In a "
        "cell's diff, line 1 is the cell's marker line, written where its `%%federated` line is: the line numbers "
        "are those JupyterLab shows in the notebook cell when `%%federated` is the cell's first line.\n\n"
        + "\n\n".join(diffs) + f"\n\n### Everything else\n\n{other}"
    )]


def _client_config_cells(source: str) -> list:
    return [_md(
        f"## NVFLARE client config\n\n`{CLIENT_CONFIG}`: NVFLARE reads it to set up this job at your site. "
        f"It configures:\n\n{_describe_client_config(json.loads(source))}\n\n"
        f"This file is, byte for byte, the client config caia-jupyter {__version__} writes; your site's caia guard "
        f"admits only that file.\n\nThe file, in full:\n\n{_fenced(source, 'json')}"
    )]


def _describe_client_config(config) -> str:
    """Plain words for what a client config sets up, one bullet per part."""
    lines = []
    for entry in _as_list(config.get("executors")):
        entry = _as_dict(entry)
        executor = _as_dict(entry.get("executor"))
        tasks = ", ".join(_code(task) for task in _as_list(entry.get("tasks"))) or "no task"
        lines.append(f"- an **executor** for {tasks}: {_describe_class(executor)}")
    for component in _as_list(config.get("components")):
        component = _as_dict(component)
        lines.append(f"- a **component** {_code(component.get('id'))}: {_describe_class(component)}")
    for key, what in (("task_data_filters", "task data filters"), ("task_result_filters", "task result filters")):
        entries = _as_list(config.get(key))
        classes = [item for entry in entries for item in _as_list(_as_dict(entry).get("filters"))]
        known = all(_as_dict(item).get("path") in {**HE_FILTERS, **STATISTICS_CLASSES} for item in classes)
        lines.append(f"- {what}: none" if not entries else
                     f"- {'' if known else '⚠ '}{what}: " + "; ".join(_describe_class(_as_dict(item)) for item in classes))
    for key in sorted(set(config) - {"executors", "components", "task_data_filters", "task_result_filters", "format_version"}):
        lines.append(f"- ⚠ a setting caia does not write, {_code(key)}: {_code(json.dumps(config[key]))}")
    return "\n".join(lines)


STATISTICS_CLASSES = {
    "nvflare.app_common.executors.statistics.statistics_executor.StatisticsExecutor":
        "NVFLARE's statistics executor: it answers the statistics tasks with what the generator computes",
    "caia_jupyter.site.statistics.CaiaStatistics":
        "caia's statistics generator (installed at your site): NVFLARE's DataFrame statistics over the datasets you "
        "release, cut to the requested columns and declared categories",
    "caia_jupyter.site.statistics.SiteStatisticsFilter":
        "caia's result filter: NVFLARE's cleansers (minimum count, histogram bins, noise on min/max) with your site's "
        "thresholds, before anything leaves",
}


def _describe_class(spec: dict) -> str:
    path, args = spec.get("path") or spec.get("name"), _as_dict(spec.get("args"))
    if path == CLIENT_API_EXECUTOR:
        script, mode = args.get("task_script_path"), args.get("execution_mode")
        how = ("inside the site's job process (in-process: NVFLARE starts no other program for it)" if mode == "in_process" else
               f"⚠ in execution mode {_code(mode)}: NVFLARE starts it as a separate command")
        sent = ("sends back their difference from the global model it received"
                if args.get("params_transfer_type") == "DIFF" else "sends back the full weights")
        words = f"NVFLARE's Client API executor. It runs {_code(script)} {how}, exchanges the model weights with it and {sent}"
    elif path == EVENT_CONVERTER:
        events = ", ".join(_code(event) for event in _as_list(args.get("events_to_convert")))
        words = f"It forwards the events it names ({events}) from your site to the server: the metrics the code logs"
    elif path in HE_FILTERS:
        words = HE_FILTERS[path]
    elif path in STATISTICS_CLASSES:
        words = STATISTICS_CLASSES[path]
    else:
        words = "⚠ Not part of caia's client config: NVFLARE loads this class at your site, and it can run any code"
    shown_args = ", ".join(f"{_code(key)} = {_code(json.dumps(value))}" for key, value in sorted(args.items()))
    return f"{_code(path)}. {words}." + (f" Arguments: {shown_args}." if shown_args else "")


def _shown_value(data: bytes) -> str:
    """A captured value as a reviewer reads it: its repr, cut at MAX_SHOWN characters."""
    shown = repr(load_captured(data))
    return shown if len(shown) <= MAX_SHOWN else shown[:MAX_SHOWN] + f"… ({len(shown)} characters)"


def _read_listed_files(bundle: Bundle) -> dict[str, bytes]:
    """Every file the manifest lists, read once; each must still match its sha256 and size."""
    files = {}
    for name, entry in bundle.manifest["files"].items():
        try:
            data = (bundle.path / name).read_bytes()
        except OSError as e:
            raise BundleError(f"bundle {bundle.path}: cannot read {name} ({e.strerror}); run `caia verify {bundle.path}`") from e
        if hashlib.sha256(data).hexdigest() != entry["sha256"] or len(data) != entry["size"]:
            raise BundleError(f"bundle {bundle.path}: file {name} does not match manifest.json; run `caia verify {bundle.path}`")
        files[name] = data
    return files


def _intros(bundle: Bundle) -> dict[int, str]:
    """The researcher's notes above each cell, from records/build.json of this very bundle id."""
    build = bundle.record("build.json")
    if not isinstance(build, dict) or build.get("bundle_id") != bundle.id:
        return {}
    cells = [c for c in _as_list(build.get("cells")) if isinstance(c, dict)]
    return {c["ordinal"]: c["intro"] for c in cells if isinstance(c.get("ordinal"), int) and isinstance(c.get("intro"), str)}


def _capabilities_cell(found: Report) -> nbformat.NotebookNode:
    """"What the code can do": the capability report `found` (`capabilities.report`) with its advice
    line, a table of findings or that there is none, and the opaque captured values by type."""
    text = f"## What the code can do\n\n*{_literal(ADVICE)}*\n\n"
    if found.findings:
        rows = "".join(
            f"| {_literal(CAPABILITIES[f.capability])} | {_code(f.what)} "
            f"| {_literal('before the first cell' if f.cell is None else f'cell {f.cell}, line {f.cell_line}')} "
            f"| {_literal(f.line)} |\n"
            for f in found.findings
        )
        text += (f"| capability | what | where | line of `{MODULE}` |\n|---|---|---|---|\n{rows}\n\n"
                 "A cell's line is the line of that notebook cell as JupyterLab numbers it, its `%%federated` line being line 1.")
    else:
        text += "Nothing beyond computing and `ctx`."
    if found.captured:
        rows = "".join(f"| {_code(c['name'])} | {_code(c['type'])} | {_literal(c['size'])} | {_code(c['sha256'])} |\n"
                       for c in found.captured)
        text += ("\n\nOpaque values captured from the researcher's kernel (loaded at your site by caia's loader):\n\n"
                 f"| Python name | type | bytes | sha256 |\n|---|---|---|---|\n{rows}")
    return _md(text)


def _protection_text(job: dict, site: Site | None) -> str:
    items = "".join(f"- {_literal(line)}\n" for line in protection(job))
    text = f"## Protection\n\nWhat the bundle requests (covered by the bundle id):\n\n{items}"
    return text + (f"\n**Your site:** {_literal(site_ceiling(site, job))}" if site is not None else "")


def _datasets_text(datasets: dict, files: dict[str, bytes]) -> str:
    sections = ["## Datasets requested\n"]
    for name, spec in datasets.items():
        rows = "".join(f"| {_code(c['name'])} | {c['kind']} |\n" for c in spec["columns"])
        sections.append(f"### {_code(name)}\n\n| column | kind |\n|---|---|\n{rows}")
        if spec.get("standard"):
            sections.append(_standard_text(spec["standard"], files[spec["standard"]]))
    if not datasets:
        sections.append("None: this bundle asks for no site data.")
    return "\n".join(sections)


def _standard_text(path: str, data: bytes) -> str:
    """A dataset's standard (`contracts.standard`) as a table, with its file in full below it."""
    standard = read_standard(data, path)  # the bundle was checked: it reads
    rows = []
    for field in standard["fields"]:
        rules = field.get("constraints", {})
        bounds = [f"{word} {rules[key]}" for key, word in (("minimum", "≥"), ("maximum", "≤")) if key in rules]
        allowed = ", ".join(str(v) for v in rules.get("enum", [])) or (f"matching {rules['pattern']}" if "pattern" in rules else "")
        cells = [field["name"], field.get("type", "any"), "yes" if rules.get("required") else "no", " and ".join(bounds),
                 allowed, field.get("unit", ""), field.get("description", "")]
        rows.append("| " + " | ".join(_literal(c) for c in cells) + " |\n")
    missing = ", ".join(repr(m) for m in standard.get("missingValues", [""]))
    return (f"The sites check their released data against this standard, {_code(path)} (covered by the bundle id), "
            f"and answer with counts of rows breaking each rule, never a value. Missing values: {_literal(missing)}.\n\n"
            "| field | type | required | range | allowed values | unit | description |\n|---|---|---|---|---|---|---|\n"
            + "".join(rows) + "\n" + _fenced(data.decode("utf-8"), "json"))


def _validation_text(record, bundle_id: str) -> str:
    note = "*Reported by the researcher's machine; not covered by the bundle id.*"
    if not isinstance(record, dict) or record.get("bundle_id") != bundle_id:
        return f"**Not validated.** No validation record for this bundle id.\n\n{note}"
    if record.get("passed") is not True:
        return f"**Failed:** {_literal(_as_dict(record.get('error')).get('summary'))}\n\n{note}"
    result = _as_dict(record.get("result"))
    versions = ", ".join(f"{_literal(k)} {_literal(v)}" for k, v in _as_dict(record.get("versions")).items())
    return (
        f"**Passed** on {_literal(record.get('started_at'))} in {_literal(record.get('duration_s'))} s: one round on "
        f"synthetic samples ({_literal(result.get('num_samples'))} examples); metrics after training: "
        f"{_code(json.dumps(result.get('final_evaluation')))}.\n\nVersions: {versions}.\n\n{note}"
    )


def _md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text)


def _code_cell(name: str, text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(text, metadata={"caia": {"file": name}})


def _literal(value) -> str:
    """Untrusted text as markdown that renders exactly as that text, on one line: no markup, no HTML.

    Hidden characters are shown as [U+XXXX]; every ASCII punctuation character becomes a
    character reference, which markdown never reads as syntax (a table's | included).
    """
    text = " ".join(reveal(str(value)).splitlines())
    return "".join(f"&#{ord(c)};" if c in string.punctuation else c for c in text)


def _code(value) -> str:
    return f"<code>{_literal(value)}</code>"


def _quote(text: str) -> str:
    """Untrusted multi-line text as a markdown quote of plain paragraphs."""
    return "\n>\n".join(f"> {_literal(line.strip())}" for line in reveal(text).splitlines() if line.strip())


def _fenced(text: str, language: str) -> str:
    """`text` as a fenced code block, whatever backticks it holds."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}{'' if text.endswith(chr(10)) else chr(10)}{fence}"


def _as_list(value) -> list:
    return value if isinstance(value, list) else []


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}

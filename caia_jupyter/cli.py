"""`caia`: the command line. Each command is a thin call into the core.

`build_parser()` + `main(argv) -> int`; the kernel's `%federated` line magic parses with
the same parser and calls the same `run()`, getting the result objects instead of text.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from .contracts.errors import CaiaError
from .contracts.version import __version__
from .researcher.wording import metric, plural
from .targets.poc import DEFAULT_POC
from .terminal import Outcome, audit_table, follow, run_summary, runs_table


# `caia site init/policy --sandbox`: the values of `sites.SANDBOX_POLICIES` (checked there; the CLI starts without pandas)
SANDBOX_CHOICES = "required|preferred|off"
SANDBOX_HELP = ("required: in a process restricted with Linux Landlock, refusing to run where the kernel has none; "
                "preferred: the same, unrestricted with a warning where it has none; off: in NVFLARE's job process "
                "(default: required at POC and production sites, preferred in the simulator)")
UNSET_SANDBOX = "not set: required at POC and production sites, preferred in the simulator"
MAX_EPSILON_HELP = ("policy: every bundle must request differential privacy (privacy=dp) with an epsilon at most this "
                    "(default: not required)")


class Parser(argparse.ArgumentParser):
    """Raises usage errors so the CLI and the line magic report them the same way."""

    def error(self, message):
        command = self.prog.removeprefix("caia").strip()  # `main` prints "caia: error:" before it
        raise CaiaError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    parser = Parser(prog="caia", description="Federated learning for cancer centers, from Jupyter notebooks.")
    parser.add_argument("--version", action="version", version=f"caia-jupyter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help):
        # argparse %-formats a help (not a description): "%%federated" must reach it as "%%%%federated"
        sub = commands.add_parser(name, parents=[common], help=help.replace("%", "%%"), description=help)
        sub.set_defaults(handler=handler)
        return sub

    p = command("bundle", do_bundle, "build the content-hashed bundle of a saved notebook's %%federated cells")
    p.add_argument("notebook", type=Path)
    p.add_argument("-o", "--output", type=Path, help="bundle directory (default: bundles/<notebook name>/ beside it)")

    p = command("verify", do_verify, "check that a bundle is intact: every file, the manifest and the id")
    p.add_argument("bundle", type=Path)
    p.add_argument("--id", dest="expected_id", help="the bundle id you were given (default: the id recorded at build)")

    p = command("pack", do_pack, "zip an intact bundle, with its records, for sending to the sites")
    p.add_argument("bundle", type=Path)
    p.add_argument("-o", "--output", type=Path, help="zip file (default: <bundle>.zip)")

    p = command("unpack", do_unpack, "extract a packed bundle and check that it is intact")
    p.add_argument("archive", type=Path)
    p.add_argument("-o", "--output", type=Path, help="bundle directory (default: beside the zip)")

    p = command("validate", do_validate, "run a notebook's bundle locally, in a fresh kernel, on its sample data")
    p.add_argument("target", type=Path, metavar="NOTEBOOK|BUNDLE")
    p.add_argument("-o", "--output", type=Path, help="bundle directory when building from a notebook")

    p = command("review", do_review, "render what a site's reviewers read (HTML)")
    p.add_argument("bundle", type=Path)
    p.add_argument("-o", "--output", type=Path, help="HTML file (default: <bundle>/records/review.html)")
    p.add_argument("--site", type=Path, help="a site directory: also show what changed since it approved the closest "
                   "earlier bundle, its privacy ceiling and the privacy scope it applies")

    p = command("approve", do_approve, "sign an approval of a bundle for a site, releasing datasets to it")
    p.add_argument("bundle", type=Path)
    p.add_argument("--site", type=Path, required=True, help="the site directory")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME[=CATALOG_ID]",
                   help="release catalog dataset CATALOG_ID (default: NAME) as the requested dataset NAME")
    p.add_argument("--key", type=Path, required=True, metavar="KEYFILE",
                   help="your reviewer private key (`caia reviewer init`), kept outside the site directory")
    p.add_argument("--expires-in", type=float, metavar="DAYS",
                   help="lifetime in days (default: 30, or the site's max_approval_days if shorter)")
    p.add_argument("--max-epsilon", type=float, metavar="EPSILON",
                   help="the site's privacy ceiling, signed into the approval: the bundle must request differential "
                        "privacy with an epsilon at most this")
    p.add_argument("-o", "--output", type=Path, help="write the approval here instead of the site's approvals/")

    p = command("revoke", do_revoke, "sign a revocation of every approval of a bundle id at a site issued until now")
    p.add_argument("bundle_id", metavar="BUNDLE_ID")
    p.add_argument("--site", type=Path, required=True, help="the site directory")
    p.add_argument("--key", type=Path, required=True, metavar="KEYFILE", help="your reviewer private key")
    p.add_argument("--reason", default="", help="why, for the site's records (never shown to the researcher)")
    p.add_argument("-o", "--output", type=Path, help="write the revocation here instead of the site's revocations/")

    p = command("reject", do_reject, "sign a rejection of a bundle at a site, with the reason; the site's audit log records it")
    p.add_argument("bundle", metavar="BUNDLE|BUNDLE_ID", help="the bundle folder you reviewed, or its id")
    p.add_argument("--site", type=Path, required=True, help="the site directory")
    p.add_argument("--key", type=Path, required=True, metavar="KEYFILE", help="your reviewer private key")
    p.add_argument("--reason", required=True, help="what you would not approve, and why (one line)")
    p.add_argument("-o", "--output", type=Path, help="write the rejection here instead of the site's rejections/")

    p = command("explore", do_explore, "federated statistics of the sites' data on NVFLARE's statistics workflow: the "
                "notebook's `%federated explore dataset=NAME:SAMPLE columns=... [histograms=COL:BINS[:LOW:HIGH],...] "
                "[categories=COL:A|B] [quantiles=Q,...] [statistics=...] [min_clients=N]` line (or those tokens after "
                "it) becomes a statistics bundle, which every site must approve; or an approved statistics bundle folder")
    p.add_argument("source", type=Path, metavar="NOTEBOOK|BUNDLE")
    p.add_argument("request", nargs="*", metavar="KEY=VALUE", help="the request, instead of the notebook's line")
    p.add_argument("--sites", nargs="+", metavar="SITE",
                   help="simulator: site directories (required); poc: site names (default: all its sites)")
    p.add_argument("--target", choices=["simulator", "poc"], default="simulator")
    p.add_argument("--poc-workspace", type=Path, help=f"the POC (default: {DEFAULT_POC})")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs folder (default: ./runs)")

    p = command("submit", do_submit, "run a validated bundle at sites (NVFLARE simulator by default) and follow it; "
                "given a notebook, build it and run only if that exact bundle is validated (and, on the simulator, approved "
                "at every site)")
    p.add_argument("bundle", type=Path, metavar="NOTEBOOK|BUNDLE")
    p.add_argument("--sites", nargs="+", metavar="SITE",
                   help="simulator: site directories; poc/prod: site names (poc default: all its sites)")
    p.add_argument("--target", choices=["simulator", "poc", "prod"], default="simulator")
    p.add_argument("--poc-workspace", type=Path, help=f"the POC (default: {DEFAULT_POC})")
    p.add_argument("--startup-kit", type=Path, help="prod: your admin startup kit (the folder holding startup/)")
    p.add_argument("--username", help="prod: your NVFLARE user name")
    p.add_argument("--round-timeout", type=int, metavar="SECONDS", help="poc/prod: longest wait for a site in a round")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="where run directories go (default: ./runs)")
    p.add_argument("--detach", action="store_true", help="start the run and return; follow it with `caia status`")
    p.add_argument("--concurrent", action="store_true",
                   help="start even while a run of the same bundle id is live under --runs")

    poc = commands.add_parser("poc", help="a real NVFLARE deployment on this machine (POC)").add_subparsers(
        dest="poc_command", required=True, metavar="POC_COMMAND")
    p = poc.add_parser("up", parents=[common], help="provision and start server + sites, each guarded by caia")
    p.set_defaults(handler=do_poc_up)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--workspace", type=Path, default=DEFAULT_POC)
    p.add_argument("--demo-data", action="store_true", help="give each site a non-IID share of the breast cancer data")
    p.add_argument("--he", action="store_true", help="provision TenSEAL CKKS contexts (encrypted aggregation, encryption=he)")
    for name, handler, text in (("status", do_poc_status, "show the POC's processes, sites and jobs"),
                                ("down", do_poc_down, "stop the POC; no NVFLARE process is left")):
        p = poc.add_parser(name, parents=[common], help=text)
        p.set_defaults(handler=handler)
        p.add_argument("--workspace", type=Path, default=DEFAULT_POC)

    p = command("status", do_status, "show a run: status, each site's state, notes and final metrics")
    p.add_argument("run", type=Path, metavar="RUN_DIR")
    p.add_argument("--follow", action="store_true", help="keep following until the run ends")

    p = command("runs", do_runs, "list the runs in a runs folder, newest first: bundle, start, duration, state, headline")
    p.add_argument("runs", type=Path, nargs="?", default=Path("runs"), metavar="RUNS_DIR",
                   help="the runs folder (default: ./runs)")

    p = command("mlflow", do_mlflow, "log a run to MLflow: parameters, metrics per site and global per round, "
                                     "the global model, tags")
    p.add_argument("run", type=Path, metavar="RUN_DIR")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="the MLflow tracking server or store (default: the folder mlruns beside the runs folder)")
    p.add_argument("--experiment", metavar="NAME", help="the MLflow experiment (default: caia)")

    p = command("demo", do_demo, "three simulated cancer centers, end to end: bundle, validate, approve, train")
    p.add_argument("--workdir", type=Path, default=Path("caia-demo"), help="demo directory (default: ./caia-demo)")

    reviewer = commands.add_parser("reviewer", help="a reviewer's own key, on the reviewer's machine").add_subparsers(
        dest="reviewer_command", required=True, metavar="REVIEWER_COMMAND")
    p = reviewer.add_parser("init", parents=[common], help="make a reviewer key pair: KEYFILE (mode 0600) and KEYFILE.pub")
    p.set_defaults(handler=do_reviewer_init)
    p.add_argument("key_file", type=Path, metavar="KEYFILE")

    standard = commands.add_parser("standard", help="dataset standards (Frictionless Table Schema)").add_subparsers(
        dest="standard_command", required=True, metavar="STANDARD_COMMAND")
    p = standard.add_parser("infer", parents=[common], help="write a starting standard from a sample CSV: its columns' "
                            "types, and required where the sample has no missing value; add ranges, allowed values and units")
    p.set_defaults(handler=do_standard_infer)
    p.add_argument("sample", type=Path, metavar="SAMPLE.csv")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                   help="the standard file to write beside the notebook (refused if it exists)")

    site = commands.add_parser("site", help="create and manage a site directory").add_subparsers(
        dest="site_command", required=True, metavar="SITE_COMMAND")
    p = site.add_parser("init", parents=[common], help="create a site directory (it holds no private key)")
    p.set_defaults(handler=do_site_init)
    p.add_argument("dir", type=Path)
    p.add_argument("--name", required=True, help="the site's NVFLARE client name, e.g. site-1")
    p.add_argument("--max-approval-days", type=float, default=None, metavar="DAYS",
                   help="policy: the longest lifetime of an approval at this site (default: 90)")
    p.add_argument("--sandbox", metavar=SANDBOX_CHOICES, help=f"policy: where approved code runs ({SANDBOX_HELP})")
    p.add_argument("--max-epsilon", type=float, metavar="EPSILON", help=MAX_EPSILON_HELP)
    p = site.add_parser("policy", parents=[common],
                        help="show a site's sandbox, privacy policy and statistics thresholds, or set them")
    p.set_defaults(handler=do_site_policy)
    p.add_argument("dir", type=Path)
    p.add_argument("--sandbox", metavar=SANDBOX_CHOICES, help=f"where approved code runs: {SANDBOX_HELP}")
    p.add_argument("--max-epsilon", metavar="EPSILON|none", help=f"{MAX_EPSILON_HELP}; none: no longer required")
    p.add_argument("--standard-violations", choices=["refuse", "report"],
                   help="released data that breaks a bundle's dataset standard: refuse the bundle, or admit it, "
                        "record the counts in the audit log and tell the researcher which rules (default: report)")
    p.add_argument("--min-count", type=int, metavar="N",
                   help="statistics: withhold every statistic of a feature with fewer than N values here (default 10)")
    p.add_argument("--noise", metavar="LOW:HIGH", help="statistics: relative noise on local min/max (default 0.1:0.3)")
    p.add_argument("--extremes", choices=("noisy", "none"),
                   help="statistics: send noisy min/max (default), or none (histograms then need a range)")
    p.add_argument("--max-bins-percent", type=float, metavar="P",
                   help="statistics: a histogram's bins stay below P%% of the feature's values (default 10)")
    p = site.add_parser("check", parents=[common], help="check the site's catalog datasets against a dataset standard: "
                        "rows breaking each rule, never a value (exit 1 if any)")
    p.set_defaults(handler=do_site_check)
    p.add_argument("dir", type=Path)
    p.add_argument("--standard", type=Path, required=True, metavar="FILE", help="the standard (a bundle's "
                   "standards/NAME.schema.json, or the researcher's file)")
    p.add_argument("--dataset", action="append", default=[], metavar="ID",
                   help="a catalog dataset id (repeatable; default: every dataset in the catalog)")
    p = site.add_parser("add-dataset", parents=[common],
                        help="register a table (CSV or Parquet) in the site's data catalog")
    p.set_defaults(handler=do_site_add_dataset)
    p.add_argument("dir", type=Path)
    p.add_argument("dataset_id")
    p.add_argument("table", type=Path, metavar="CSV|PARQUET")
    p.add_argument("--replace", action="store_true", help="point an existing dataset id at this file")
    p = site.add_parser("trust", parents=[common], help="trust another reviewer's public key")
    p.set_defaults(handler=do_site_trust)
    p.add_argument("dir", type=Path)
    p.add_argument("public_key", type=Path)
    p = site.add_parser("audit", parents=[common],
                        help="verify a site's hash-chained audit log and print it with its head hash (exit 1 if it was tampered with)")
    p.set_defaults(handler=do_site_audit)
    p.add_argument("dir", type=Path)
    p.add_argument("--head", metavar="HASH",
                   help="the head hash an earlier audit printed, kept elsewhere: also detect records deleted from the end")
    p = site.add_parser("show", parents=[common],
                        help="show a site's datasets, keys, approvals, policy, privacy scope and what this machine's kernel can sandbox")
    p.set_defaults(handler=do_site_show)
    p.add_argument("dir", type=Path)
    return parser


def run(args: argparse.Namespace, namespace: Mapping | None = None) -> Outcome:
    """Run a parsed command; `namespace` is the kernel's, when called from `%federated`."""
    return args.handler(args, namespace)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        outcome = run(args)
    except CaiaError as e:
        print(f"caia: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("caia: interrupted", file=sys.stderr)
        return 130
    try:
        print(json.dumps(outcome.data, indent=2, default=str, allow_nan=False) if args.json else outcome.text, flush=True)
    except BrokenPipeError:  # `caia ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
    return outcome.exit_code


def do_bundle(args, namespace=None) -> Outcome:
    from .researcher.compose import build

    bundle = build(args.notebook, args.output, namespace)
    files = bundle.manifest["files"]
    lines = [f"bundle {bundle.path}"]
    lines += [f"  {name}  {plural(e['size'], 'byte')}{'  OPAQUE ' + e['python_type'] if e.get('opaque') else ''}" for name, e in files.items()]
    lines += [f"  dataset {name}: {plural(len(spec['columns']), 'column')}" for name, spec in bundle.manifest["datasets"].items()]
    lines.append(bundle.id)
    return Outcome(bundle, "\n".join(lines), {"bundle_id": bundle.id, "path": str(bundle.path), "manifest": bundle.manifest})


def do_verify(args, namespace=None) -> Outcome:
    import re

    from .contracts.manifest import BUNDLE_ID
    from .researcher.bundle import verify

    expected = args.expected_id
    if expected is not None and not BUNDLE_ID.fullmatch(expected):
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise CaiaError(f"--id {expected!r} is not a whole bundle id; give all of it, as `caia bundle` prints it: "
                            "sha256:<64 hex digits>")
        expected = f"sha256:{expected}"
    bundle_id, problems = verify(args.bundle, expected)
    data = {"bundle_id": bundle_id, "intact": not problems, "problems": problems}
    if problems:
        text = f"NOT INTACT: {args.bundle}\n" + "\n".join(f"  {p}" for p in problems)
        return Outcome(data, text, data, exit_code=1)
    return Outcome(data, f"intact: {args.bundle}\n{bundle_id}", data)


def do_pack(args, namespace=None) -> Outcome:
    from .researcher.bundle import load
    from .researcher.transport import pack

    archive = pack(args.bundle, args.output)
    bundle_id = load(args.bundle).id
    return Outcome(archive, f"packed {archive}\n{bundle_id}", {"archive": str(archive), "bundle_id": bundle_id})


def do_unpack(args, namespace=None) -> Outcome:
    from .researcher.transport import unpack

    bundle = unpack(args.archive, args.output)
    return Outcome(bundle, f"intact bundle at {bundle.path}\n{bundle.id}", {"path": str(bundle.path), "bundle_id": bundle.id})


def do_validate(args, namespace=None) -> Outcome:
    from .researcher import bundle as bundles
    from .researcher.validation import validate, validate_notebook

    if args.target.suffix == ".ipynb":
        result = validate_notebook(args.target, args.output, namespace)
    else:
        result = validate(bundles.require_intact(args.target))
    record = result.record
    data = {"bundle_id": result.bundle_id, "passed": result.passed, "record": str(result.record_path), **record}
    if not result.passed:
        where = f"\nexecuted notebook: {result.notebook_path}" if result.notebook_path else ""
        text = f"validation FAILED: {result.error}{where}\n{result.bundle_id}"
        return Outcome(result, text, data, exit_code=1)
    if record.get("kind") == "statistics":
        return Outcome(result, f"validation passed: the samples satisfy the statistics request\nrecord: "
                       f"{result.record_path}\n{result.bundle_id}", data)
    metrics = record["result"]["final_evaluation"]
    shown = ", ".join(f"{k}={metric(v)}" for k, v in metrics.items())
    text = (f"validation passed in {record['duration_s']} s: one round on {plural(record['result']['num_samples'], 'sample row')}; "
            f"{shown}\nrecord: {result.record_path}\n{result.bundle_id}")
    return Outcome(result, text, data)


def do_review(args, namespace=None) -> Outcome:
    from .contracts.fileset import is_statistics
    from .reviewer.review import protection, rendered, site_ceiling, site_refusal, site_scope
    from .reviewer.signing import standing, validation_problem
    from .site.sites import open_site

    site = open_site(args.site) if args.site else None
    review = rendered(args.bundle, args.output, site)
    path, bundle, capabilities, changes = review.path, review.bundle, review.capabilities, review.changes
    job = bundle.manifest["job"]
    problem = validation_problem(bundle)
    if is_statistics(job):  # no code: what leaves each site is the review
        lines = [f"review: {path}", "statistics bundle: no code; the review lists what leaves each site",
                 f"validation: {problem or 'passed'}"]
        data = {"review": str(path), "statistics": job["statistics"], "validation": {"passed": not problem, "problem": problem}}
        if site is not None:
            from .site.statistics import read_thresholds

            data["standing"] = standing(site, bundle.id)
            lines += [f"{site.name}'s {thresholds_line(read_thresholds(site.path))}", data["standing"]["line"]]
        return Outcome(path, "\n".join(lines), data)
    requested = protection(job)
    data = {"review": str(path), "protection": requested, "capabilities": capabilities.to_json(),
            "validation": {"passed": not problem, "problem": problem}}
    lines = [f"review: {path}", f"protection: {'; '.join(requested)}"]
    if site is None:
        lines.append(f"validation: {problem or 'passed'}")
    else:
        scope, policy = site_scope(site)
        data["site"] = {"name": site.name, "max_epsilon": site.max_epsilon, "note": site_ceiling(site, job),
                        "privacy_scope": scope, "privacy": policy, "refusal": site_refusal(site, job),
                        "standards": standard_lines(site, bundle)}
        data["standing"] = standing(site, bundle.id)
        lines += [data["site"]["note"], *scope, *data["site"]["standards"], f"validation: {problem or 'passed'}",
                  data["standing"]["line"]]
        data["changes"] = changes.to_json() if changes else None
        lines += changes_lines(changes, site)
    lines += [f"can do: {f.to_json()['heading'].lower()}: {f.what} ({where_found(f)})" for f in capabilities.findings]
    lines += [] if capabilities.findings else ["can do: nothing beyond computing and ctx (advice, not a gate)"]
    return Outcome(path, "\n".join(lines), data)


def standard_lines(site, bundle) -> list[str]:
    """`caia review --site`: per requested dataset with a standard, whether the site's catalog dataset
    of that name meets it (exact counts: the reviewer works at the site) and what the site's policy
    does if not; without such a dataset, the `caia site check` that tells."""
    from .contracts.standard import read_standard, summary, violations
    from .site.sites import read_dataset

    does = "refuses the bundle" if site.standard_violations == "refuse" else "admits it, recording the counts"
    lines = []
    for name, spec in bundle.manifest["datasets"].items():
        if not spec.get("standard"):
            continue
        file = bundle.path / spec["standard"]
        if name not in site.catalog:
            lines.append(f"standard of {name}: check the dataset you release with `caia site check {site.path} "
                         f"--standard {file} --dataset ID`; breaking it, {site.name}'s policy {does}")
            continue
        broken = violations(read_dataset(site, name)[0], read_standard(file.read_bytes(), spec["standard"]))
        lines.append(f"standard of {name}: {site.name}'s dataset {name} "
                     + (f"breaks it: {summary(broken)}; its policy {does}" if broken else "meets it"))
    return lines


def where_found(finding) -> str:
    """Where a capability finding is: "cell 3, line 4; federated.py line 40" (the line as JupyterLab
    numbers it in that cell), or "federated.py line 12, before the first cell"."""
    if finding.cell is None:
        return f"federated.py line {finding.line}, before the first cell"
    return f"cell {finding.cell}, line {finding.cell_line}; federated.py line {finding.line}"


DIFF_LINES_SHOWN = 40  # per changed part in the terminal; the review page shows every line


def changes_lines(changes, site) -> list[str]:
    """`caia review --site` in words: against which approved bundle, which parts changed and which
    are only cosmetic, each changed part's diff indented under it (at most DIFF_LINES_SHOWN lines),
    then the other changes."""
    if changes is None:
        return [f"changes: nothing to compare: {site.name} approved no earlier bundle of this notebook"]
    changed = [c for c in changes.changed if c.status != "cosmetic"]
    cosmetic = [c for c in changes.changed if c.status == "cosmetic"]
    parts = "; ".join(f"{c.title} {c.status}" for c in changed + cosmetic) or "federated.py unchanged"
    lines = [f"changed since {site.name} approved {changes.base.short_id}: {parts}"]
    if changes.cosmetic:
        lines.append("  cosmetic: same syntax tree; the bytes changed, so it still needs a new approval")
    for part in changed:
        diff = part.diff.splitlines()
        lines.append(f"  {part.title} {part.status}:")
        lines += [f"      {line}" for line in diff[:DIFF_LINES_SHOWN]]
        if len(diff) > DIFF_LINES_SHOWN:
            lines.append(f"      … {plural(len(diff) - DIFF_LINES_SHOWN, 'more line')} in the review page")
    return lines + [f"  {line}" for line in changes.other]


def do_approve(args, namespace=None) -> Outcome:
    from .contracts.privacy import exact
    from .researcher.bundle import require_intact
    from .reviewer.signing import approve, parse_releases
    from .site.sites import open_site

    bundle = require_intact(args.bundle)
    site = open_site(args.site)
    releases = parse_releases(args.dataset)
    approval = approve(site, bundle.id, releases, args.key, args.expires_in, args.output, bundle=bundle,
                       max_epsilon=args.max_epsilon)
    ceiling = f"; epsilon at most {exact(approval.max_epsilon)}" if approval.max_epsilon is not None else ""
    text = (f"approved at {site.name}: {', '.join(f'{k}={v}' for k, v in releases.items()) or 'no datasets'}{ceiling}; "
            f"expires {approval.to_json()['expires_at']}\napproval: {approval.path}"
            + ("" if args.output else f"\nthe bundle is kept in {site.name}'s approved/ store and the approval recorded "
               "in its audit log (`caia site audit`)") + f"\n{bundle.id}")
    return Outcome(approval, text, approval.to_json())


def do_revoke(args, namespace=None) -> Outcome:
    from .reviewer.signing import revoke
    from .site.approvals import CLOCK_SKEW
    from .site.sites import open_site

    site = open_site(args.site)
    revocation = revoke(site, args.bundle_id, args.key, args.reason, args.output)
    shown = revocation.to_json()
    text = (f"revoked at {site.name}: every approval of this bundle issued until {shown['covers_until']} (the revocation's "
            f"time, {shown['issued_at']}, plus the {CLOCK_SKEW.total_seconds() / 60:g} minutes of clock skew a site allows)"
            f"\nrevocation: {revocation.path}\n{revocation.bundle_id}")
    return Outcome(revocation, text, revocation.to_json())


def do_reject(args, namespace=None) -> Outcome:
    from .contracts.manifest import BUNDLE_ID
    from .researcher.bundle import require_intact
    from .reviewer.signing import reject
    from .site.approvals import find_approval
    from .site.sites import open_site

    if BUNDLE_ID.fullmatch(args.bundle):
        bundle_id = args.bundle
    elif Path(args.bundle).exists():
        bundle_id = require_intact(Path(args.bundle)).id
    else:
        raise CaiaError(f"{args.bundle!r} is neither a bundle folder nor a whole bundle id; give the folder you reviewed, "
                        "or the full id as `caia bundle` prints it: sha256: and 64 hex digits")
    site = open_site(args.site)
    rejection = reject(site, bundle_id, args.key, args.reason, args.output)
    data = rejection.to_json()
    lines = [f"rejected at {site.name}: {rejection.reason}", f"rejection: {rejection.path}"]
    approval, _ = find_approval(site, bundle_id)
    data["approval_in_force"] = approval.to_json() if approval else None
    if approval is not None:
        lines.append(f"the approval by key {approval.key_id} still counts until {data['approval_in_force']['expires_at']}: "
                     f"a rejection is a record, not a gate; to withdraw the approval: caia revoke {bundle_id} "
                     f"--site {args.site} --key {args.key}")
    return Outcome(rejection, "\n".join([*lines, bundle_id]), data)


def do_reviewer_init(args, namespace=None) -> Outcome:
    from .reviewer.keypair import create_key_pair

    kid, public_file = create_key_pair(args.key_file)
    text = (f"reviewer key {kid}\n  private: {args.key_file} (mode 0600: keep it on this machine, never at a site)"
            f"\n  public:  {public_file}\ngive the public key to each site's admin, who runs:"
            f"\n  caia site trust SITE_DIR {public_file}")
    return Outcome(kid, text, {"key_id": kid, "private_key": str(args.key_file), "public_key": str(public_file),
                               "trust": f"caia site trust SITE_DIR {public_file}"})


def do_site_init(args, namespace=None) -> Outcome:
    from .site.sites import DEFAULT_MAX_APPROVAL_DAYS, init
    from .site.statistics import read_thresholds

    days = DEFAULT_MAX_APPROVAL_DAYS if args.max_approval_days is None else args.max_approval_days
    site = init(args.dir, args.name, days, sandbox=args.sandbox, max_epsilon=args.max_epsilon)
    text = (f"site {site.name} created at {site.path} (approvals last at most {plural(site.max_approval_days, 'day')})"
            f"\nsandbox {site.sandbox or UNSET_SANDBOX}\n{ceiling_line(site)}\n{standard_line(site)}"
            f"\n{thresholds_line(read_thresholds(site.path))}; `caia site policy DIR` sets these"
            f"\nno reviewer is trusted yet: each reviewer runs `caia reviewer init KEYFILE`, then "
            f"`caia site trust {site.path} KEYFILE.pub`")
    return Outcome(site, text, site.to_json())


def do_site_add_dataset(args, namespace=None) -> Outcome:
    from .contracts.schema import describe
    from .site.sites import add_dataset, open_site

    site = open_site(args.dir)
    entry = add_dataset(site, args.dataset_id, args.table, args.replace)
    notes = entry["notes"]
    columns = ", ".join(f"{c['name']} ({c['kind']}{': ' + notes[c['name']] if c['name'] in notes else ''})"
                        for c in entry["columns"])
    text = f"{site.name}: dataset {args.dataset_id}, {describe(entry['read'])}, {plural(len(entry['columns']), 'column')}: {columns}"
    return Outcome(entry, text, entry)


def do_site_trust(args, namespace=None) -> Outcome:
    from .site.sites import open_site, trust

    site = open_site(args.dir)
    kid = trust(site, args.public_key)
    return Outcome(kid, f"{site.name} now trusts reviewer key {kid}", {"key_id": kid})


def do_site_policy(args, namespace=None) -> Outcome:
    from .site.sites import open_site, set_policy
    from .site.statistics import read_thresholds, write_thresholds

    changes = {"sandbox": args.sandbox} if args.sandbox else {}
    if args.max_epsilon is not None:
        changes["max_epsilon"] = parse_max_epsilon(args.max_epsilon)
    if args.standard_violations:
        changes["standard_violations"] = args.standard_violations
    thresholds = planned_thresholds(args)  # checked before anything is written
    site = set_policy(args.dir, **changes) if changes else open_site(args.dir)
    if thresholds is None:
        thresholds = read_thresholds(site.path)
    else:
        write_thresholds(site.path, thresholds)
    report = sandbox_report(site)
    text = "\n".join([f"site {site.name}: sandbox {site.sandbox or UNSET_SANDBOX}", *report["lines"], standard_line(site),
                      thresholds_line(thresholds), ceiling_line(site)])
    return Outcome(site, text, {"policy": site.policy, "kernel": report["kernel"], "refusal": report["refusal"],
                                "statistics": asdict(thresholds)})


def planned_thresholds(args):
    """The site's statistics thresholds as --min-count, --noise, --extremes, --max-bins-percent change
    them (SiteError, one line, for a value out of range), or None when none is given."""
    from .site.statistics import merged_thresholds

    changes = {"min_count": args.min_count, "extremes": None if args.extremes is None else args.extremes == "noisy",
               "max_bins_percent": args.max_bins_percent}
    if args.noise is not None:
        try:
            changes["min_noise_level"], changes["max_noise_level"] = (float(x) for x in args.noise.split(":"))
        except ValueError:
            raise CaiaError(f"--noise {args.noise!r}: write LOW:HIGH, e.g. 0.1:0.3") from None
    if all(value is None for value in changes.values()):
        return None
    return merged_thresholds(args.dir, **changes)


def do_explore(args, namespace=None) -> Outcome:
    from .targets.explore import explore

    result, run = explore(args.source, args.sites, args.runs, tokens=args.request or None, target=args.target,
                          poc_workspace=args.poc_workspace)
    if result is None:
        raise CaiaError(f"the statistics run did not finish: {run.message}")
    return Outcome(result, exploration_text(result, run.path), {"run": str(run.path), **result.to_json()})


def exploration_text(result, run_path) -> str:
    """What `caia explore` prints of a `researcher.explore.Result`: each table, each histogram (one
    every site withheld says so), and what `suppressed` and `partial` mean."""
    from .researcher.explore import PARTIAL, SUPPRESSED

    text = [f"statistics of bundle {result.bundle_id.removeprefix('sha256:')[:12]} from {', '.join(result.sites)} "
            f"(run {run_path})"]
    for statistic in result.statistics:
        text += ["", "failure_count (values missing)" if statistic == "failure_count" else statistic,
                 result.table(statistic).to_string()]
    for column in result.spec.get("histograms", {}):
        histogram = result.histogram(column)
        text += ["", f"histogram of {column}", histogram.to_string(index=False) if len(histogram) else f"  {SUPPRESSED} at every site"]
    text += ["", f"{SUPPRESSED} at the sites: {plural(len(result.suppressed()), 'statistic')}, each under its site's thresholds "
             "(a column with fewer values than the site's minimum count, or with fewer missing values but some, is "
             "withheld whole; a small bin or category count, with as many others as keep it from being derived); "
             f"a pooled value some site withheld its part of reads '{PARTIAL}'"]
    return "\n".join(text)


def do_site_show(args, namespace=None) -> Outcome:
    from .site import privacy_policy
    from .site.statistics import read_thresholds
    from .site.sites import open_site

    site = open_site(args.dir)
    policy = privacy_policy.read_policy(site.path)  # an unusable privacy.json: one line naming the problem
    report = sandbox_report(site)
    data = site.to_json()
    data["approvals"] = sorted(p.name for p in site.approvals_dir.glob("*.json"))
    data["revocations"] = sorted(p.name for p in site.revocations_dir.glob("*.json"))
    data["kernel"], data["refusal"] = report["kernel"], report["refusal"]
    data["privacy"] = privacy_policy.to_json(policy)
    data["statistics"] = asdict(read_thresholds(site.path))  # an unusable statistics.json: one line naming it
    text = "\n".join([f"site {site.name} at {site.path}",
                      f"  datasets: {', '.join(data['datasets']) or 'none'}",
                      f"  trusted reviewer keys: {', '.join(data['trusted_keys']) or 'none'}",
                      *(f"  {problem}" for problem in data["key_problems"]),
                      f"  approvals: {len(data['approvals'])}, revocations: {len(data['revocations'])}",
                      f"  policy: approvals last at most {plural(site.max_approval_days, 'day')}; "
                      f"sandbox {site.sandbox or UNSET_SANDBOX}",
                      *(f"  {line}" for line in report["lines"]),
                      f"  {standard_line(site)}",
                      f"  {ceiling_line(site)}",
                      *(f"  {line}" for line in privacy_policy.describe(policy)),
                      f"  {thresholds_line(read_thresholds(site.path))}"])
    return Outcome(site, text, data)


def do_site_audit(args, namespace=None) -> Outcome:
    from .site import audit
    from .site.sites import open_site

    site = open_site(args.dir)
    records, problems = audit.verify(site, args.head)
    head = audit.head_of(records)
    data = {"site": site.name, "intact": not problems, "problems": problems, "head": head, "records": records}
    lines = [audit_table(records)]
    if problems:
        lines += [f"AUDIT LOG BROKEN at {site.name}:", *(f"  {p}" for p in problems),
                  "its head hash is not worth keeping: the chain it ends is broken"]
    else:
        lines += [f"head: {head}",
                  *([f"head {args.head} found: nothing was deleted before it"] if args.head else []),
                  f"intact: {len(records)} records, hash-chained; keep the head elsewhere and pass it as --head next time"]
    return Outcome(data, "\n".join(lines), data, exit_code=1 if problems else 0)


def do_standard_infer(args, namespace=None) -> Outcome:
    from .contracts.fsutil import write_atomic
    from .contracts.standard import dumps, infer_standard

    if args.output.exists():
        raise CaiaError(f"{args.output} exists; choose another -o FILE, or delete it to infer it again")
    inferred = infer_standard(args.sample)
    write_atomic(args.output, dumps(inferred))
    lines = [f"wrote {args.output}: {len(inferred['fields'])} fields"]
    lines += [f"  {f['name']}: {f['type']}{', required' if f.get('constraints', {}).get('required') else ''}"
              for f in inferred["fields"]]
    lines.append(f"add ranges (minimum, maximum), allowed values (enum), units and descriptions, then request it with "
                 f"%%federated standard.NAME={args.output.name}")
    return Outcome(inferred, "\n".join(lines), {"path": str(args.output), "standard": inferred})


def do_site_check(args, namespace=None) -> Outcome:
    from .contracts.standard import read_standard, summary, violations
    from .site.sites import open_site, read_dataset

    site = open_site(args.dir)
    try:
        data = args.standard.read_bytes()
    except OSError as e:
        raise CaiaError(f"standard {args.standard} cannot be read ({e.strerror}); give the standard file") from None
    standard = read_standard(data, str(args.standard))
    ids = args.dataset or sorted(site.catalog)
    if not ids:
        raise CaiaError(f"site {site.name} has no dataset in its catalog; add one with `caia site add-dataset`")
    found = {dataset_id: violations(read_dataset(site, dataset_id)[0], standard) for dataset_id in ids}
    data = {"site": site.name, "conforms": not any(found.values()),
            "datasets": {dataset_id: {"conforms": not broken, "violations": [
                {"field": v.field, "rule": v.rule, "rows": v.count} for v in broken]} for dataset_id, broken in found.items()}}
    lines = [f"site {site.name} dataset {dataset_id}: " + (f"breaks the standard: {summary(broken)}" if broken
                                                             else "meets the standard") for dataset_id, broken in found.items()]
    return Outcome(data, "\n".join(lines), data, exit_code=0 if data["conforms"] else 1)


def parse_max_epsilon(value: str) -> float | None:
    """`--max-epsilon X|none` -> X as a number, or None for "none"; CaiaError for anything else
    (the range is checked where the policy is set)."""
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise CaiaError(f"--max-epsilon {value!r} must be a number above 0, or none to require no differential privacy") from None


def standard_line(site) -> str:
    """What the site's guard does with released data that breaks a bundle's dataset standard, as one line."""
    if site.standard_violations == "refuse":
        return "data breaking a bundle's dataset standard: the bundle is refused"
    return "data breaking a bundle's dataset standard: admitted, the counts recorded in the audit log"


def thresholds_line(thresholds) -> str:
    """The site's statistics thresholds as one line, in the words of `caia site policy`'s options."""
    return (f"statistics thresholds: --min-count {thresholds.min_count} (no count between 0 and it leaves the site), "
            f"--noise {thresholds.min_noise_level}:{thresholds.max_noise_level} (on min/max), "
            f"--extremes {'noisy' if thresholds.extremes else 'none'}, --max-bins-percent {thresholds.max_bins_percent:g} "
            "(a histogram needs fewer bins than this percent of its values)")


def ceiling_line(site) -> str:
    """The site's privacy policy as one line."""
    from .contracts.privacy import exact

    if site.max_epsilon is None:
        return "differential privacy: not required (an approval may still set a ceiling with --max-epsilon)"
    return f"differential privacy: required, epsilon at most {exact(site.max_epsilon)}"


def sandbox_report(site) -> dict:
    """What this machine's kernel can enforce and what the site's sandbox policy makes of it here:
    {"kernel": `landlock.support()`, "refusal": the one-line reason the site, run at a POC or in
    production, refuses every bundle on this machine, or None; "lines": what a terminal shows}."""
    from .site import landlock
    from .site.sandbox import SandboxRequired, placement

    kernel = landlock.support()
    lines, refusal = [kernel_line(kernel)], None
    try:
        placed = placement(site.sandbox or "required")  # unset: required at POC and production sites
    except SandboxRequired as e:
        refusal = str(e)
        lines.append(f"here the site refuses every bundle: {e}" if site.sandbox else
                     "here the site refuses every bundle at a POC or in production (their default policy, required, "
                     "needs Linux Landlock); the simulator runs it without the kernel's sandbox, with a warning")
    else:
        if placed == "off":
            lines.append("the site runs approved code in NVFLARE's job process, without the sandbox")
        elif placed == "process":
            lines.append("here the site runs approved code in a process of its own without the kernel's "
                         "restrictions, with a warning")
    return {"kernel": kernel, "refusal": refusal, "lines": lines}


def kernel_line(kernel: Mapping) -> str:
    """`landlock.support()` as one line: "kernel sandbox: Landlock ABI 7 (files, TCP, ...); sockets closed by seccomp"."""
    if not kernel["filesystem"]:
        return "kernel sandbox: no Linux Landlock (it needs Linux 5.13 or later with Landlock enabled)"
    covers = ["files"] + ["TCP"] * kernel["tcp"] + ["signals and abstract UNIX sockets"] * kernel["scoping"]
    sockets = "sockets closed by seccomp" if kernel["sockets"] else "sockets left open (no seccomp filter here)"
    return f"kernel sandbox: Landlock ABI {kernel['landlock_abi']} ({', '.join(covers)}); {sockets}"


def do_demo(args, namespace=None) -> Outcome:
    from .demo import main as demo

    return Outcome(None, "", {}, exit_code=demo(args.workdir))


def do_submit(args, namespace=None) -> Outcome:
    from .targets.submit import submit

    run = submit(args.bundle, args.sites, target=args.target, runs_root=args.runs, poc_workspace=args.poc_workspace,
                 startup_kit=args.startup_kit, username=args.username, round_timeout=args.round_timeout,
                 concurrent=args.concurrent, namespace=namespace)
    if args.detach:
        bundle_id = run.spec["bundle_id"]
        return Outcome(run, f"started {run.path} (bundle {bundle_id.removeprefix('sha256:')[:12]})\nfollow it: caia status "
                       f"{run.path} --follow", {"run": str(run.path), "bundle_id": bundle_id})
    follow(run)
    return run_summary(run)


def do_status(args, namespace=None) -> Outcome:
    from .researcher.runs import Run

    run = Run(args.run)
    if args.follow:
        follow(run)
    return run_summary(run)


def do_runs(args, namespace=None) -> Outcome:
    from .overview import runs

    if args.runs.exists() and not args.runs.is_dir():
        raise CaiaError(f"{args.runs} is not a folder; pass the runs folder (default: ./runs)")
    listed = runs(args.runs)
    return Outcome(listed, runs_table(listed), {"runs": listed})


def do_mlflow(args, namespace=None) -> Outcome:
    from .researcher.runs import Run
    from .researcher.tracking import log_run

    logged = log_run(Run(args.run), args.tracking_uri, args.experiment)
    text = (f"logged run {args.run} to MLflow {logged.tracking_uri}, experiment {logged.experiment!r}, "
            f"run id {logged.run_id}")
    if logged.partial:
        text += f"\nnote: the run is {logged.status}, not finished: MLflow holds what it recorded so far"
    return Outcome(logged, text, logged.as_dict())


def do_poc_up(args, namespace=None) -> Outcome:
    from .targets.poc import up

    poc = up(args.workspace, args.sites, args.demo_data, he=args.he, say=print if not args.json else (lambda *a: None))
    data = {"workspace": str(poc.workspace), "sites": poc.site_names, "admin_kit": str(poc.admin_kit), "he": poc.he,
            "site_dirs": {name: str(poc.site_dir(name)) for name in poc.site_names},
            "reviewer_keys": {name: str(poc.reviewer_key(name)) for name in poc.site_names}}
    return Outcome(poc, f"site directories: {poc.workspace / 'sites'}\nreviewer keys: {poc.workspace / 'reviewers'}", data)


def do_poc_status(args, namespace=None) -> Outcome:
    from .targets.poc import status

    report = status(args.workspace)
    text = (f"POC {report['workspace']}: {'running' if report['running'] else 'stopped'}; sites {', '.join(report['sites'])}"
            + (f"; connected: {', '.join(report['connected']) or 'none'}; jobs running: {len(report['jobs'])}" if report["running"] else ""))
    return Outcome(report, text, report)


def do_poc_down(args, namespace=None) -> Outcome:
    from .targets.poc import down

    killed = down(args.workspace, say=print if not args.json else (lambda *a: None))
    return Outcome(killed, "", {"killed": killed})


if __name__ == "__main__":
    sys.exit(main())

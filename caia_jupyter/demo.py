"""`caia demo`: three simulated cancer centers, end to end, on one machine.

Each center gets a site directory whose catalog holds a non-IID share of scikit-learn's
breast cancer data, and a reviewer whose key lies outside every site directory
(`targets.demo_sites`).
The example notebook is bundled, validated, rendered for review and approved at every site,
then trained across the three sites on NVFLARE's simulator. Last, the same job with one
byte changed in transit is refused by every site's guard.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .contracts.errors import CaiaError
from .researcher import compose, validation
from .researcher.wording import plural
from .reviewer import review, signing
from .targets import simulator
from .targets.demo_sites import make_sites
from .targets.submit import submit
from .terminal import follow, run_summary

NOTEBOOK = "01_breast_cancer.ipynb"
MARKER = ".caia-demo"


def examples_dir() -> Path:
    packaged = Path(__file__).parent / "examples"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[1] / "example_notebooks"


def prepare_workdir(workdir: Path) -> Path:
    """A fresh demo directory; only a directory an earlier demo made is ever removed."""
    if workdir.exists():
        if not (workdir / MARKER).exists():
            raise CaiaError(f"{workdir} exists and was not made by `caia demo`; pass --workdir NEW_DIR")
        shutil.rmtree(workdir)
    (workdir / "notebook").mkdir(parents=True)
    (workdir / MARKER).write_text("made by caia demo; removed by the next run\n")
    shutil.copy(examples_dir() / NOTEBOOK, workdir / "notebook" / NOTEBOOK)
    shutil.copytree(examples_dir() / "samples", workdir / "notebook" / "samples")
    return workdir / "notebook" / NOTEBOOK


def main(workdir: Path, say=print) -> int:
    workdir = Path(workdir).resolve()
    notebook = prepare_workdir(workdir)
    say(f"demo directory: {workdir}")
    centers = make_sites(workdir / "sites")
    demo_sites = [center.site for center in centers]
    for site in demo_sites:
        rows = sum(1 for _ in open(site.catalog["breast_cancer"]["path"])) - 1
        say(f"  {site.name}: {rows} patients in its catalog (never leave the site)")
    say(f"  each site's reviewer key: {workdir / 'reviewers'} (outside every site directory)")

    built = compose.build(notebook)
    say(f"bundle {built.path}\n  {built.id}")
    result = validation.validate(built)
    if not result.passed:
        raise CaiaError(f"validation failed: {result.error}")
    say(f"validation passed in {result.record['duration_s']} s (one round on synthetic samples, fresh kernel)")
    say(f"review rendering: {review.render(built.path)}")
    for center in centers:
        releases = {"breast_cancer": "breast_cancer"}
        approval = signing.approve(center.site, built.id, releases, center.reviewer_key, expires_in_days=7, bundle=built)
        say(f"  {center.site.name} reviewer approved (key {approval.key_id}), releasing breast_cancer")

    site_dirs = [site.path for site in demo_sites]
    say("federated training on the NVFLARE simulator (each site's guard checks the bundle first):")
    run = submit(built.path, site_dirs, runs_root=workdir / "runs")
    follow(run)
    summary = run_summary(run)
    say(summary.text)
    if run.status != "finished":
        raise CaiaError(f"the federated run did not finish: {run.message}")

    say("the same job with one byte changed on its way to the sites:")
    tampered = simulator.create_run(built, {s.name: s.path for s in demo_sites}, workdir / "runs")
    job = simulator.prepare(tampered)
    for app in sorted(job.glob("app_site-*")):
        flip_one_byte(app / "custom" / "federated.py")
    refused = simulator.start(tampered)
    refused.wait()
    for site, reason in refused.refusals.items():
        say(f"  {reason}")
    if refused.status != "refused" or len(refused.refusals) != len(demo_sites):
        raise CaiaError(f"expected every site to refuse the tampered job, got {refused.status}: {refused.message}")
    say(f"tampered job refused by all {plural(len(demo_sites), 'site')}; nothing of it ran.")
    say(built.id)
    return 0


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

"""`caia demo`: three simulated cancer centers, end to end, on one machine.

Each center gets a site directory whose catalog holds a non-IID share of scikit-learn's
breast cancer data (the real rows; the researcher's notebook only has synthetic samples).
Each center's reviewer key lies in reviewers/ beside the sites, never in a site directory.
The example notebook is bundled, validated, rendered for review and approved at every site,
then trained across the three sites on NVFLARE's simulator. Last, the same job with one
byte changed in transit is refused by every site's guard.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cli import follow, run_summary
from .contracts.errors import CaiaError
from .researcher import bundle, validation
from .reviewer import review
from .site import approvals, keys, sites
from .targets import simulator
from .targets.submit import submit

NOTEBOOK = "01_breast_cancer.ipynb"
MARKER = ".caia-demo"
# Share of each class (malignant, benign) that goes to each site: skewed on purpose.
CLASS_SHARES = {"site-1": (0.60, 0.15), "site-2": (0.30, 0.35), "site-3": (0.10, 0.50)}


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


@dataclass(frozen=True)
class DemoSite:
    """A simulated center: its site directory, and its reviewer's private key, kept outside every site."""

    site: sites.Site
    reviewer_key: Path


def add_reviewer(site: sites.Site, key_file: Path) -> Path:
    """Make a reviewer key pair at `key_file` (refused inside a site directory) and have `site` trust it."""
    keys.create_key_pair(key_file)
    sites.trust(site, keys.public_key_file(key_file))
    return key_file


def make_sites(root: Path, count: int = 3, seed: int = 0, reviewers: Path | None = None,
               reuse: bool = False) -> list[DemoSite]:
    """`count` sites under `root` (site-1, site-2, ...), each with a non-IID split of the breast
    cancer data in its catalog and one trusted reviewer, whose key is `reviewers`/<site>.key
    (default: `root`/../reviewers, outside every site directory).

    With `reuse`, sites an earlier call made under `root` are returned as they are.
    """
    from sklearn.datasets import load_breast_cancer

    root = Path(root)
    reviewers = Path(reviewers) if reviewers is not None else root.parent / "reviewers"
    names = [f"site-{i + 1}" for i in range(count)]
    if reuse and all((root / name / "site.json").is_file() for name in names):
        made = [DemoSite(sites.open_site(root / name), reviewers / f"{name}.key") for name in names]
        missing = [str(m.reviewer_key) for m in made if not m.reviewer_key.is_file()]
        if missing:
            raise CaiaError(f"the demo reviewer key {missing[0]} is missing; remove {root} and run again")
        return made
    frame = load_breast_cancer(as_frame=True).frame
    rng = np.random.default_rng(seed)
    if count == len(CLASS_SHARES):
        shares = list(CLASS_SHARES.values())
    else:  # half an even share each, the rest skewed at random: no site is empty, none alike
        shares = (0.5 / count + 0.5 * rng.dirichlet([1.0] * count, size=2)).T
    parts = {name: [] for name in names}
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(frame["target"].to_numpy() == label))
        weights = np.array([share[label] for share in shares], dtype=float)
        cuts = np.round(np.cumsum(weights / weights.sum())[:-1] * len(rows)).astype(int)
        for name, part in zip(names, np.split(rows, cuts)):
            parts[name].append(part)
    made = []
    for name in names:
        site = sites.init(root / name, name)
        data = root / name / "data" / "breast_cancer.csv"
        data.parent.mkdir()
        frame.iloc[np.sort(np.concatenate(parts[name]))].to_csv(data, index=False)
        sites.add_dataset(site, "breast_cancer", data)
        made.append(DemoSite(site, add_reviewer(site, reviewers / f"{name}.key")))
    return made


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

    built = bundle.build(notebook)
    say(f"bundle {built.path}\n  {built.id}")
    result = validation.validate(built)
    if not result.passed:
        raise CaiaError(f"validation failed: {result.error}")
    say(f"validation passed in {result.record['duration_s']} s (one round on synthetic samples, fresh kernel)")
    say(f"review rendering: {review.render(built.path)}")
    for center in centers:
        approval = approvals.approve(center.site, built.id, {"breast_cancer": "breast_cancer"}, center.reviewer_key,
                                     expires_in_days=7)
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
    say(f"tampered job refused by all {len(demo_sites)} sites; nothing of it ran.")
    say(built.id)
    return 0


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

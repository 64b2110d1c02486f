"""Simulated cancer centers for `caia demo`, `caia poc up --demo-data` and the example notebooks.

Each center gets a site directory whose catalog holds a non-IID share of scikit-learn's breast
cancer data (the real rows; the researcher's notebook only has synthetic samples), and one
trusted reviewer whose key lies in reviewers/ beside the sites, never in a site directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contracts.errors import CaiaError
from ..reviewer import keypair
from ..site import sites

# Share of each class (malignant, benign) that goes to each site: skewed on purpose.
CLASS_SHARES = {"site-1": (0.60, 0.15), "site-2": (0.30, 0.35), "site-3": (0.10, 0.50)}


@dataclass(frozen=True)
class DemoSite:
    """A simulated center: its site directory, and its reviewer's private key, kept outside every site."""

    site: sites.Site
    reviewer_key: Path


def add_reviewer(site: sites.Site, key_file: Path) -> Path:
    """Make a reviewer key pair at `key_file` (refused inside a site directory) and have `site` trust it."""
    keypair.create_key_pair(key_file)
    sites.trust(site, keypair.public_key_file(key_file))
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

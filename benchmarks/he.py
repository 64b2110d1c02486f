"""Encrypted aggregation against the same run in clear, on one POC provisioned with HE contexts.

    .venv/bin/python benchmarks/he.py --sites 3 --rounds 5

Starts `caia poc up --he --demo-data` in a scratch workspace (ports 8002/8003 must be free), builds
the example notebook's bundle twice, as it is and with `encryption=he` on its `%%federated` line,
has every site's demo reviewer approve both, and runs them one after the other, each `--repeat`
times. Reports wall time (submit to the end of the run), what the sites sent the server and what
the server sent the sites (NVFLARE's own byte counts, from each site's job log), the final global
model's accuracy (the sites' evaluation, weighted by num_samples), and the largest difference
between the two global models. Always stops the POC.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "example_notebooks" / "01_breast_cancer.ipynb"
SENT = re.compile(r"SubmitUpdate to: server\. size: .*?\((\d+) Bytes\)")
RECEIVED = re.compile(r"Received from server\. getTask: \w+ size: .*?\((\d+) Bytes\)")


def bundles(workdir: Path, rounds: int):
    """The example notebook's bundle in clear and with encryption=he, each validated."""
    import nbformat

    from caia_jupyter.researcher import compose, validation

    shutil.copytree(NOTEBOOK.parent / "samples", workdir / "samples")
    built = {}
    for variant, extra in (("clear", ""), ("he", " encryption=he")):
        nb = nbformat.read(NOTEBOOK, as_version=4)
        for cell in nb.cells:
            cell.source = cell.source.replace("rounds=5", f"rounds={rounds}{extra}")
        path = workdir / f"{variant}.ipynb"
        nbformat.write(nb, path)
        built[variant] = compose.build(path)
        assert validation.validate(built[variant]).passed
    return built


def traffic(poc, job_id: str) -> tuple[int, int]:
    """Bytes the sites sent the server and the server sent the sites in NVFLARE job `job_id`."""
    sent = received = 0
    for name in poc.site_names:
        log = (poc.kits / name / job_id / "log.txt").read_text()
        sent += sum(int(n) for n in SENT.findall(log))
        received += sum(int(n) for n in RECEIVED.findall(log))
    return sent, received


def measure(poc, bundle, runs: Path) -> dict:
    import torch

    from caia_jupyter.targets.submit import submit

    start = time.monotonic()
    run = submit(bundle.path, target="poc", poc_workspace=poc.workspace, runs_root=runs)
    assert run.wait(timeout=1800) == "finished", run.message
    wall = time.monotonic() - start
    sent, received = traffic(poc, run.outcome["job_id"])
    return {"wall": wall, "sent": sent, "received": received, "accuracy": run.final_metrics()["global"]["accuracy"],
            "model": torch.load(run.global_model, weights_only=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from caia_jupyter.reviewer import signing
    from caia_jupyter.site import sites
    from caia_jupyter.targets import poc as pocs

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        poc = pocs.up(workdir / "poc", sites=args.sites, demo_data=True, he=True, say=lambda *a: None)
        try:
            built = bundles(workdir, args.rounds)
            for name in poc.site_names:
                for bundle in built.values():
                    signing.approve(sites.open_site(poc.site_dir(name)), bundle.id,
                                    {"breast_cancer": "breast_cancer"}, poc.reviewer_key(name))
            results = {variant: [] for variant in built}
            for _ in range(args.repeat):
                for variant, bundle in built.items():
                    results[variant].append(measure(poc, bundle, workdir / "runs"))
        finally:
            pocs.down(poc.workspace, say=lambda *a: None)
    report(results, args.sites, args.rounds)
    return 0


def report(results: dict, sites: int, rounds: int) -> None:
    clear, he = (min(results[v], key=lambda r: r["wall"]) for v in ("clear", "he"))
    difference = max(float((he["model"][k].double() - clear["model"][k].double()).abs().max()) for k in clear["model"])
    print("| sites x rounds | wall clear / HE | HE / clear | sites -> server clear / HE | HE / clear "
          "| server -> sites clear / HE | HE / clear | final accuracy clear / HE | largest model difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {sites} x {rounds} | {clear['wall']:.1f} / {he['wall']:.1f} s | **{he['wall'] / clear['wall']:.2f}** "
          f"| {mb(clear['sent'])} / {mb(he['sent'])} | **{he['sent'] / clear['sent']:.0f}** "
          f"| {mb(clear['received'])} / {mb(he['received'])} | **{he['received'] / clear['received']:.0f}** "
          f"| {clear['accuracy']:.4f} / {he['accuracy']:.4f} | {difference:.1e} |")


def mb(count: int) -> str:
    return f"{count / 1e6:.2f} MB"


if __name__ == "__main__":
    sys.exit(main())

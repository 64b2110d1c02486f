"""Differential privacy: the DP example notebook's training at epsilon 1, 3, 8 and without DP,
each through `caia submit` on the simulator, on the demo's three sites (the same non-IID splits of
the breast cancer data as `caia demo` and the example notebooks). Reports the final global
accuracy as the run reports it, the epsilon each site spent, wall time and the size of the weights
a site sends each round, with their ratios to the run without DP.

    .venv/bin/python benchmarks/privacy.py
    .venv/bin/python benchmarks/privacy.py --epsilons 1 3 8 --rounds 5

The variant without DP is the same notebook with its request and its `ctx.make_private` line taken
out (`without_dp`): the same DataLoader, batch size, learning rate, seeds and rounds, plain SGD.
Each DP variant is the notebook with only its `epsilon=` changed, approved at every site with that
epsilon as the site's ceiling (`caia approve --max-epsilon`). Every variant runs in its own child
process, timed and sampled as in `benchmarks/simulator.py`; the sites keep their default sandbox
policy (each site runs the code in a sandboxed process).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "example_notebooks" / "02_breast_cancer_dp.ipynb"
NO_DP = "no DP"
# The notebook's DP request on its first %%federated line, and the two lines of train() that use DP.
REQUEST = " privacy=dp epsilon=3 delta=1e-5 max_grad_norm=1.0 local_epochs=1"
MAKE_PRIVATE = 'model, optimizer, loader = ctx.make_private(model, optimizer, data["train"])'
LOCAL_EPOCHS = 'ctx.privacy["local_epochs"]'


def _simulator_benchmark():
    """benchmarks/simulator.py as a module (its `measure`): one way to time and sample a variant."""
    spec = importlib.util.spec_from_file_location("bench_simulator", Path(__file__).with_name("simulator.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edit(source: str, old: str, new: str) -> str:
    """`source` with `old` replaced by `new`; SystemExit when the notebook no longer holds `old`."""
    if old not in source:
        raise SystemExit(f"{NOTEBOOK.name} no longer holds {old!r}; update benchmarks/privacy.py to match it")
    return source.replace(old, new)


def variant_source(source: str, epsilon: float | None, rounds: int) -> str:
    """One federated cell of the notebook for a variant: epsilon None is the run without DP (no
    request, loader = the DataLoader itself, one local epoch as the notebook requests)."""
    if "%%federated dataset=" in source:
        source = edit(source, "rounds=5", f"rounds={rounds}")
        return edit(source, REQUEST, REQUEST.replace("epsilon=3", f"epsilon={epsilon:g}") if epsilon else "")
    if MAKE_PRIVATE in source and epsilon is None:
        source = edit(source, MAKE_PRIVATE, 'loader = data["train"]')
        return edit(source, LOCAL_EPOCHS, "1")
    return source


def write_variant(workdir: Path, epsilon: float | None, rounds: int) -> Path:
    """The notebook of one variant (`variant_source` applied to each federated cell) in `workdir`,
    beside a copy of the notebook's samples; returns its path."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("%%federated"):
            cell.source = variant_source(cell.source, epsilon, rounds)
    if not (workdir / "samples").exists():
        shutil.copytree(NOTEBOOK.parent / "samples", workdir / "samples")
    notebook = workdir / f"dp_{'none' if epsilon is None else f'{epsilon:g}'}.ipynb"
    nbformat.write(nb, notebook)
    return notebook


def setup(workdir: Path, epsilons: list[float], rounds: int) -> dict:
    """The demo's three sites, and one bundle per variant, validated and approved at every site."""
    from caia_jupyter.researcher import compose, validation
    from caia_jupyter.reviewer import signing
    from caia_jupyter.targets.demo_sites import make_sites

    centers = make_sites(workdir / "sites")
    bundles = {}
    for epsilon in [None, *epsilons]:
        name = NO_DP if epsilon is None else f"{epsilon:g}"
        built = compose.build(write_variant(workdir, epsilon, rounds))
        if (built.manifest["job"].get("privacy") is None) != (epsilon is None):
            raise SystemExit(f"the bundle for {name} does not request what it should: {built.manifest['job']}")
        if not validation.validate(built).passed:
            raise SystemExit(f"the bundle for {name} failed validation: {built.path}")
        for center in centers:
            signing.approve(center.site, built.id, {"breast_cancer": "breast_cancer"}, center.reviewer_key,
                            bundle=built, max_epsilon=epsilon)
        bundles[name] = str(built.path)
    return {"bundles": bundles, "sites": [str(center.site.path) for center in centers]}


def run_variant(workdir: Path, name: str) -> dict:
    """Submit one variant's bundle to the simulator and wait; what the run reports."""
    import numpy as np

    from caia_jupyter.targets.submit import submit

    spec = json.loads((workdir / "setup.json").read_text())
    run = submit(spec["bundles"][name], spec["sites"], runs_root=workdir / "runs" / name.replace(" ", "_"))
    if run.wait() != "finished":
        raise SystemExit(f"{name}: {run.message}")
    guarantee = run.guarantee or {}
    npz = run.path / "global_model.npz"
    with np.load(npz, allow_pickle=False) as arrays:
        weights = sum(arrays[key].nbytes for key in arrays.files)
    return {"accuracy": round(run.final_metrics()["global"]["accuracy"], 4),
            "epsilon_spent": {site: round(value, 3) for site, value in guarantee.get("epsilon_spent", {}).items()},
            "weights_bytes": int(weights), "npz_bytes": npz.stat().st_size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "setup" or a variant's name
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "setup":
        (args.workdir / "setup.json").write_text(json.dumps(setup(args.workdir, args.epsilons, args.rounds)))
        return 0
    if args.child:  # run one variant, print its result as the last line
        print(json.dumps(run_variant(args.workdir, args.child)))
        return 0

    measure = _simulator_benchmark().measure
    names = [NO_DP, *(f"{e:g}" for e in args.epsilons)]
    with tempfile.TemporaryDirectory(prefix="caia-bench-dp-") as tmp:
        workdir = Path(tmp)
        child = [sys.executable, __file__, "--workdir", str(workdir), "--rounds", str(args.rounds),
                 "--epsilons", *map(str, args.epsilons)]
        subprocess.run([*child, "--child", "setup"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = {}
        for name in names:
            results[name] = measure([*child, "--child", name])
            print(json.dumps({"variant": name, "rounds": args.rounds, **results[name]}), flush=True)
    base = results[NO_DP]
    print()
    print("| epsilon | final global accuracy | epsilon spent site-1 / site-2 / site-3 | wall | wall / no DP | "
          "weights per update (npz) | update / no DP |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        spent = " / ".join(f"{v:.2f}" for _, v in sorted(r.get("epsilon_spent", {}).items())) or "-"
        wall = f"{r['wall_s']} s" if r["wall_s"] else r["note"]
        ratio = f"{r['wall_s'] / base['wall_s']:.2f}" if r["wall_s"] and base["wall_s"] else "-"
        score = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
        size = (f"{r['weights_bytes']} B ({r['npz_bytes']} B) | {r['weights_bytes'] / base['weights_bytes']:.2f}"
                if "weights_bytes" in r and "weights_bytes" in base else "- | -")
        print(f"| {name} | {score} | {spent} | {wall} | **{ratio}** | "
              f"{size} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

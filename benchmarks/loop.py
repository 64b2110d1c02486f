"""The researcher's loop: `caia bundle` and `caia verify` of the example notebook, and the time
from saving an edit to the first metric of its run on the simulator.

    .venv/bin/python benchmarks/loop.py
    .venv/bin/python benchmarks/loop.py --repeats 9 --loops 3 --code /path/to/another/checkout

Every command runs as a child process with PYTHONPATH set to `--code` (default: this checkout),
so two checkouts are measured by the same script on the same machine. The baseline is the start of
the same Python doing nothing (`python -c pass`), measured here, between the commands: the CLI
figures are given as wall times and as their ratio to that baseline, the median of `--repeats`.

`caia bundle` is timed two ways: a first build (no bundle folder yet) and a rebuild after an edit
(the notebook's learning rate changed, so a new bundle id, over the bundle of the version before).
`caia verify` checks the bundle the rebuild wrote.

Save to first metric runs in one child process standing for a researcher's running Jupyter server:
the example notebook and the demo's three sites (`targets/demo_sites.py`). Each loop edits the
notebook's learning rate and saves it, then builds the bundle, validates it (papermill, a fresh
kernel), signs each site's approval of the new id (scripted here, standing in for the sites'
reviewers), submits it to the simulator and polls the run until its first metric record is there,
then waits for the run to end. The first loop of the process, which also imports torch and
NVFLARE, is reported apart (cold) from the median of the next `--loops` (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "example_notebooks" / "01_breast_cancer.ipynb"
LR = "param.lr=0.05"  # the notebook's learning rate on its first %%federated line: each edit changes it
STEPS = ("build", "validate", "approve", "submit", "first_metric")


def edit(text: str, loop: int) -> str:
    """The notebook's JSON text with its learning rate changed for edit number `loop` (a new bundle
    id each time); SystemExit when the notebook no longer holds LR."""
    if LR not in text:
        raise SystemExit(f"{NOTEBOOK.name} no longer holds {LR!r}; update benchmarks/loop.py to match it")
    return text.replace(LR, f"param.lr={0.05 + loop / 1000:g}")


def copy_example(workdir: Path) -> Path:
    """The example notebook and its samples copied into `workdir`; returns the notebook's path."""
    shutil.copytree(NOTEBOOK.parent / "samples", workdir / "samples", dirs_exist_ok=True)
    notebook = workdir / NOTEBOOK.name
    shutil.copyfile(NOTEBOOK, notebook)
    return notebook


def child_env(code: Path) -> dict:
    """This environment with PYTHONPATH=`code`, writing bytecode as an installed package has it."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(command: list[str], code: Path, cwd: Path) -> float:
    """Wall seconds of `command` run with PYTHONPATH=`code`; SystemExit if it fails."""
    env = child_env(code)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return wall


def cli_times(code: Path, repeats: int) -> dict:
    """Median wall seconds of `python -c pass` (baseline), a first `caia bundle`, a rebuild after an
    edit and `caia verify`, each run `repeats` times, interleaved so load changes hit all alike."""
    caia = [sys.executable, "-m", "caia_jupyter.cli"]
    walls = {"baseline": [], "bundle_first": [], "bundle_rebuild": [], "verify": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        notebook = copy_example(workdir)
        bundle = workdir / "bundles" / notebook.stem
        for n in range(repeats):
            walls["baseline"].append(timed([sys.executable, "-c", "pass"], code, workdir))
            shutil.rmtree(workdir / "bundles", ignore_errors=True)
            walls["bundle_first"].append(timed([*caia, "bundle", notebook.name], code, workdir))
            notebook.write_text(edit(NOTEBOOK.read_text(), n + 1))
            walls["bundle_rebuild"].append(timed([*caia, "bundle", notebook.name], code, workdir))
            walls["verify"].append(timed([*caia, "verify", str(bundle.relative_to(workdir))], code, workdir))
    return {name: round(statistics.median(values), 3) for name, values in walls.items()}


def loop_child(workdir: Path, loops: int) -> None:
    """In the child: `loops` + 1 edit-save-run loops (module docstring); prints one JSON line,
    {"cold": {step: seconds}, "warm": [{step: seconds}, ...]}, each step's seconds since the save."""
    from caia_jupyter.researcher import compose, validation
    from caia_jupyter.reviewer import signing
    from caia_jupyter.targets.demo_sites import make_sites
    from caia_jupyter.targets.submit import submit

    centers = make_sites(workdir / "sites", 3)
    notebook = copy_example(workdir)
    results = []
    for n in range(loops + 1):
        marks = {}
        saved = time.perf_counter()
        notebook.write_text(edit(NOTEBOOK.read_text(), n + 1))
        built = compose.build(notebook)
        marks["build"] = time.perf_counter() - saved
        result = validation.validate(built)
        if not result.passed:
            raise SystemExit(f"validation failed: {result}")
        marks["validate"] = time.perf_counter() - saved
        for center in centers:
            signing.approve(center.site, built.id, {"breast_cancer": "breast_cancer"}, center.reviewer_key)
        marks["approve"] = time.perf_counter() - saved
        run = submit(built.path, [center.site.path for center in centers], runs_root=workdir / "runs")
        marks["submit"] = time.perf_counter() - saved
        while not run.records():
            if run.outcome:
                raise SystemExit(f"the run ended before any metric: {run.message}")
            time.sleep(0.02)
        marks["first_metric"] = time.perf_counter() - saved
        if run.wait() != "finished":
            raise SystemExit(f"the run did not finish: {run.message}")
        results.append({step: round(seconds, 2) for step, seconds in marks.items()})
    print(json.dumps({"cold": results[0], "warm": results[1:]}))


def first_metric(code: Path, loops: int) -> dict:
    """The save-to-first-metric loops in a child process with PYTHONPATH=`code`: its JSON, with
    "median": the median of each step over the warm loops."""
    with tempfile.TemporaryDirectory() as tmp:
        env = child_env(code)
        done = subprocess.run([sys.executable, __file__, "--child", tmp, "--loops", str(loops)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the save-to-first-metric loop failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    result["median"] = {step: round(statistics.median(w[step] for w in result["warm"]), 2) for step in STEPS}
    return result


def table(cli: dict, loop: dict | None) -> str:
    lines = ["| command | wall (median) | / python -c pass |", "|---|---|---|"]
    for name in ("baseline", "bundle_first", "bundle_rebuild", "verify"):
        lines.append(f"| {name} | {cli[name]:.3f} s | {cli[name] / cli['baseline']:.1f} |")
    if loop:
        lines += ["", "| seconds since the save | " + " | ".join(STEPS) + " |", "|---|" + "---|" * len(STEPS)]
        lines.append("| cold (first loop) | " + " | ".join(f"{loop['cold'][s]:.2f}" for s in STEPS) + " |")
        lines.append("| warm (median) | " + " | ".join(f"{loop['median'][s]:.2f}" for s in STEPS) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose caia_jupyter is measured")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each CLI command (median)")
    parser.add_argument("--loops", type=int, default=2, help="warm save-to-first-metric loops (median), after a cold one")
    parser.add_argument("--skip-run", action="store_true", help="only the CLI commands")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        loop_child(args.child, args.loops)
        return 0
    cli = cli_times(args.code.resolve(), args.repeats)
    loop = None if args.skip_run else first_metric(args.code.resolve(), args.loops)
    print(json.dumps({"code": str(args.code), "cli": cli, "loop": loop}))
    print(table(cli, loop))
    return 0


if __name__ == "__main__":
    sys.exit(main())

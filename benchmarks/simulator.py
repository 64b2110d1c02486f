"""Same training, three ways: a hand-written NVFLARE FedAvgRecipe + SimEnv job (NVFLARE defaults),
`caia submit` on the simulator with every site's sandbox off (the code runs in NVFLARE's job
process), and `caia submit` with the sandbox (the sites' default: a sandboxed process per site,
restricted with Landlock). Reports wall time, peak memory of each process tree and the final
global model's accuracy, evaluated the same way for all.

    .venv/bin/python benchmarks/simulator.py --sites 3 --rounds 5
    .venv/bin/python benchmarks/simulator.py --sites 8 16 --rounds 5

Each variant runs in its own child process; this parent (which never imports torch) samples the
child's whole process tree every 0.2 s: RSS summed over processes (counts shared pages once per
process) and PSS summed (shared pages split: what the tree really occupies).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"baseline": None, "in-process": "off", "sandboxed": "preferred"}  # variant -> every site's sandbox policy
NOTEBOOK = REPO / "example_notebooks" / "01_breast_cancer.ipynb"

BASELINE_CLIENT = '''
import json
from pathlib import Path
import nvflare.client as flare
import federated
from bench_model import Model
from caia_jupyter.site.context import Context

spec = json.loads((Path(__file__).parent / "bench_spec.json").read_text())
flare.init()
site = flare.get_site_name()
ctx = Context(site, spec["params"], {"breast_cancer": {"path": spec["data"][site], "columns": spec["columns"]}},
              rounds=spec["rounds"])
model = Model()
data = federated.load_data(ctx)
while flare.is_running():
    incoming = flare.receive()
    ctx.round = incoming.current_round
    model.load_state_dict(incoming.params)
    metrics = federated.evaluate(model.net, data, ctx)
    trained = federated.train(model.net, data, ctx)
    flare.send(flare.FLModel(params=model.state_dict(), metrics=metrics,
                             meta={"NUM_STEPS_CURRENT_ROUND": trained["num_samples"]}))
'''

BASELINE_MODEL = '''
from torch import nn
import federated

class Model(nn.Module):
    """The notebook's build_model(), as a class NVFLARE's persistor can instantiate."""
    def __init__(self):
        super().__init__()
        self.net = federated.build_model()

    def forward(self, x):
        return self.net(x)
'''


def setup(workdir: Path, count: int, rounds: int):
    """Sites with non-IID splits, and the example notebook's bundle, validated and approved everywhere."""
    import nbformat

    from caia_jupyter.researcher import compose, validation
    from caia_jupyter.reviewer import signing
    from caia_jupyter.targets.demo_sites import make_sites

    centers = make_sites(workdir / "sites", count)
    notebook = workdir / NOTEBOOK.name
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        cell.source = cell.source.replace("rounds=5", f"rounds={rounds}")
    nbformat.write(nb, notebook)
    shutil.copytree(NOTEBOOK.parent / "samples", workdir / "samples")
    built = compose.build(notebook)
    assert validation.validate(built).passed
    for center in centers:
        signing.approve(center.site, built.id, {"breast_cancer": "breast_cancer"}, center.reviewer_key)
    return built, [center.site for center in centers]


def run_caia(workdir: Path, sandbox: str) -> Path:
    from caia_jupyter.site import sites
    from caia_jupyter.targets.submit import submit

    spec = json.loads((workdir / "setup.json").read_text())
    for site in spec["sites"]:
        sites.set_sandbox(site, sandbox)
    run = submit(spec["bundle"], spec["sites"], runs_root=workdir / "runs")
    assert run.wait() == "finished", run.message
    return run.global_model


def run_baseline(workdir: Path) -> Path:
    from nvflare.app_opt.pt.recipes import FedAvgRecipe
    from nvflare.recipe import SimEnv

    spec = json.loads((workdir / "setup.json").read_text())
    code = workdir / "baseline_code"
    code.mkdir()
    shutil.copy(Path(spec["bundle"]) / "federated.py", code / "federated.py")
    (code / "bench_model.py").write_text(BASELINE_MODEL)
    (code / "bench_client.py").write_text(BASELINE_CLIENT)
    sys.path.insert(0, str(code))
    from bench_model import Model

    (code / "bench_spec.json").write_text(json.dumps(spec))
    os.chdir(code)  # the recipe resolves its script and files relative to the working directory
    recipe = FedAvgRecipe(name="baseline", min_clients=len(spec["data"]), num_rounds=spec["rounds"], model=Model(),
                          train_script="bench_client.py")
    for file in ("federated.py", "bench_model.py", "bench_spec.json"):
        recipe.add_client_file(file)
    recipe.add_server_file("federated.py")
    recipe.add_server_file("bench_model.py")
    recipe.run(SimEnv(num_clients=len(spec["data"]), workspace_root=str(workdir / "baseline_ws")))
    found = list((workdir / "baseline_ws").rglob("FL_global_model.pt"))
    return found[0]


def accuracy(workdir: Path, model_file: Path) -> float:
    """The final global model evaluated at every site with the notebook's own evaluate(), weighted by size."""
    import torch

    from caia_jupyter.site.context import Context
    from caia_jupyter.site.runtime import load_entry_points

    spec = json.loads((workdir / "setup.json").read_text())
    entry = load_entry_points(spec["bundle"])
    state = torch.load(model_file, weights_only=True)
    state = state.get("model", state)
    state = {k.removeprefix("net."): v for k, v in state.items()}
    total = weighted = 0.0
    for site, path in spec["data"].items():
        ctx = Context(site, spec["params"], {"breast_cancer": {"path": path, "columns": spec["columns"]}}, spec["rounds"])
        model = entry.build_model()
        model.load_state_dict(state)
        data = entry.load_data(ctx)
        size = len(data["test"][1])
        weighted += entry.evaluate(model, data, ctx)["accuracy"] * size
        total += size
    return weighted / total


def measure(command: list[str], limit: float = 900) -> dict:
    """Run `command`, sampling its process tree; wall time, peak RSS sum and peak PSS sum."""
    import psutil

    start = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak_rss = peak_pss = 0
    peak_procs = 0
    root = psutil.Process(child.pid)
    while child.poll() is None:
        rss = pss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for proc in tree:
            try:
                info = proc.memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak_rss, peak_pss, peak_procs = max(peak_rss, rss), max(peak_pss, pss), max(peak_procs, len(tree))
        if time.monotonic() - start > limit:  # a hung run: stop its whole tree and say so
            for proc in tree:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            return {"wall_s": None, "peak_rss_mb": peak_rss // 2**20, "peak_pss_mb": peak_pss // 2**20,
                    "processes": peak_procs, "final_accuracy": None, "note": f"did not finish in {limit:.0f} s"}
        time.sleep(0.2)
    wall = time.monotonic() - start
    output = child.stdout.read()
    if child.returncode != 0:
        raise SystemExit(f"{command} failed with exit code {child.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    return {"wall_s": round(wall, 1), "peak_rss_mb": peak_rss // 2**20, "peak_pss_mb": peak_pss // 2**20,
            "processes": peak_procs, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=["setup", *VARIANTS], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "setup":
        write_setup(args.workdir, args.sites[0], args.rounds)
        return 0
    if args.child:  # run one variant, print its result as the last line
        model = run_baseline(args.workdir) if args.child == "baseline" else run_caia(args.workdir, VARIANTS[args.child])
        print(json.dumps({"final_accuracy": round(accuracy(args.workdir, model), 4)}))
        return 0

    rows = []
    for count in args.sites:
        with tempfile.TemporaryDirectory(prefix="caia-bench-") as tmp:
            workdir = Path(tmp)
            child = [sys.executable, __file__, "--workdir", str(workdir), "--sites", str(count), "--rounds", str(args.rounds)]
            subprocess.run([*child, "--child", "setup"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results = {variant: measure([*child, "--child", variant]) for variant in VARIANTS}
            rows.append((count, results))
            print(json.dumps({"sites": count, "rounds": args.rounds, **results}), flush=True)
    print()
    print("| sites x rounds | baseline wall | caia in-process wall | caia sandboxed wall | sandboxed / in-process | "
          "sandboxed / baseline | peak PSS baseline / in-process / sandboxed | final accuracy baseline / in-process / sandboxed |")
    print("|---|---|---|---|---|---|---|---|")
    for count, r in rows:
        b, i, c = r["baseline"], r["in-process"], r["sandboxed"]
        wall = lambda x: f"{x['wall_s']} s" if x["wall_s"] else x["note"]
        ratio = lambda x, y: f"{x['wall_s'] / y['wall_s']:.2f}" if x["wall_s"] and y["wall_s"] else "-"
        score = lambda x: f"{x['final_accuracy']:.4f}" if x["final_accuracy"] is not None else "-"
        print(f"| {count} x {args.rounds} | {wall(b)} | {wall(i)} | {wall(c)} | **{ratio(c, i)}** | **{ratio(c, b)}** | "
              f"{b['peak_pss_mb']} / {i['peak_pss_mb']} / {c['peak_pss_mb']} MB | {score(b)} / {score(i)} / {score(c)} |")
    return 0


def write_setup(workdir: Path, count: int, rounds: int) -> None:
    built, made = setup(workdir, count, rounds)
    (workdir / "setup.json").write_text(json.dumps({
        "bundle": str(built.path), "sites": [str(s.path) for s in made], "rounds": rounds,
        "params": built.manifest["job"]["params"], "columns": built.manifest["datasets"]["breast_cancer"]["columns"],
        "data": {s.name: s.catalog["breast_cancer"]["path"] for s in made},
    }))


if __name__ == "__main__":
    sys.exit(main())

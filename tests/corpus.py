"""A small corpus of named notebooks, good and broken, written on demand into a directory.

Each entry is a list of cells: ("md", text) or ("code", source). `write(name, folder)` writes
`<name>.ipynb` plus the synthetic sample it refers to; every notebook meant to be valid is
checked with nbformat on the way out.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

SAMPLE_CSV = "x1,x2,label\n" + "".join(f"{i * 0.1:.1f},{(i % 7) * 0.3:.1f},{i % 2}\n" for i in range(24))

HEADER = "%%federated dataset=tiny:samples/tiny.csv rounds=2 min_clients=1 param.lr=0.1"
IMPORTS = HEADER + "\nimport torch\nfrom torch import nn\n"
MODEL = "%%federated\ndef build_model():\n    torch.manual_seed(0)\n    return nn.Linear(2, 2)\n"
LOAD = """%%federated
def load_data(ctx):
    frame = ctx.dataset("tiny")
    x = torch.tensor(frame[["x1", "x2"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(frame["label"].to_numpy())
    return x, y
"""
TRAIN = """%%federated
def train(model, data, ctx):
    x, y = data
    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"])
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"num_samples": len(x), "train_loss": loss.item()}
"""
EVALUATE = """%%federated
def evaluate(model, data, ctx):
    x, y = data
    with torch.no_grad():
        return {"accuracy": (model(x).argmax(1) == y).float().mean().item()}
"""
# Differential privacy: DP-SGD through ctx.make_private, over a torch DataLoader (Opacus samples from it)
DP_HEADER = HEADER.replace("rounds=2", "rounds=3") + " privacy=dp epsilon=3 delta=1e-5 max_grad_norm=1.0"
DP_LOAD = LOAD.replace("    return x, y\n", "    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)\n")
DP_TRAIN = """%%federated
def train(model, data, ctx):
    optimizer = torch.optim.SGD(model.parameters(), lr=ctx.params["lr"])
    model, optimizer, loader = ctx.make_private(model, optimizer, data)
    for x, y in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return {"num_samples": len(data.dataset)}
"""
DP_EVALUATE = """%%federated
def evaluate(model, data, ctx):
    x, y = data.dataset.tensors
    with torch.no_grad():
        return {"accuracy": (model(x).argmax(1) == y).float().mean().item()}
"""
GOOD = [
    ("md", "# Tiny federated notebook"),
    ("code", "import pandas as pd\nprint('local exploration')"),
    ("md", "The imports and settings."),
    ("code", IMPORTS),
    ("md", "A linear model."),
    ("code", MODEL),
    ("code", LOAD),
    ("code", TRAIN),
    ("code", EVALUATE),
    ("code", "# a local plot would go here\nx = 1"),
]

DP = [("code", DP_HEADER + "\nimport torch\nfrom torch import nn\n"), ("code", MODEL), ("code", DP_LOAD), ("code", DP_TRAIN),
      ("code", DP_EVALUATE)]

CORPUS = {
    "good": GOOD,
    "train_raises": [c if c[1] != TRAIN else ("code", TRAIN.replace("    x, y = data\n", "    x, y = data\n    raise RuntimeError('boom in train')\n")) for c in GOOD],
    "no_federated_cells": [("md", "# nothing federated"), ("code", "x = 1")],
    "syntax_error": [c if c[1] != MODEL else ("code", MODEL.replace("def build_model():", "def build_model(:")) for c in GOOD],
    "magic_inside": [c if c[1] != LOAD else ("code", LOAD.replace("    frame = ", "    %time frame = ")) for c in GOOD],
    "shell_inside": [c if c[1] != MODEL else ("code", MODEL + "!pip install torch\n") for c in GOOD],
    "missing_evaluate": [c for c in GOOD if c[1] != EVALUATE],
    "dp": DP,
    "free_name": [c if c[1] != TRAIN else ("code", TRAIN.replace('lr=ctx.params["lr"]', "lr=LEARNING_RATE")) for c in GOOD],
}


def notebook(name: str) -> nbformat.NotebookNode:
    cells = [nbformat.v4.new_markdown_cell(s) if kind == "md" else nbformat.v4.new_code_cell(s) for kind, s in CORPUS[name]]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"{name}-{index}"
    nbformat.validate(nb)
    return nb


def write(name: str, folder: Path) -> Path:
    """Write corpus notebook `name` (or a broken-file variant) into `folder`; return its path."""
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    (folder / "samples" / "tiny.csv").write_text(SAMPLE_CSV)
    path = folder / f"{name}.ipynb"
    if name == "not_json":
        path.write_text('{"cells": [ this is not json')
    elif name == "nbformat_invalid":
        broken = json.loads(nbformat.writes(notebook("good")))
        broken["cells"][0]["cell_type"] = "spreadsheet"
        path.write_text(json.dumps(broken))
    else:
        nbformat.write(notebook(name), path)
    return path

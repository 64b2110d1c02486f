import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest

from caia_jupyter.contracts.errors import BundleError
from caia_jupyter.researcher import compose
from caia_jupyter.reviewer import capabilities
from caia_jupyter.reviewer.capabilities import CAPABILITIES, Finding, analyze

REPO = Path(__file__).resolve().parents[1]

# Each snippet, the capability it must report and the 1-based line it must report it at.
TRICKY = [
    pytest.param("import os\nos.system('ls')\n", "subprocess", 2, id="plain-os-system"),
    pytest.param("import os as o\no.system('ls')\n", "subprocess", 2, id="alias-import-os-system"),
    pytest.param("from os import system as s\n\n\ns('ls')\n", "subprocess", 4, id="from-import-as-then-call"),
    pytest.param("import os\nx = os\nx.system('ls')\n", "subprocess", 3, id="module-assigned-to-a-name"),
    pytest.param("import os\na, b = 1, os\nb.popen('ls')\n", "subprocess", 3, id="module-in-tuple-unpacking"),
    pytest.param("import os\nif (x := os):\n    x.execv('/bin/sh', [])\n", "subprocess", 3, id="walrus-alias"),
    pytest.param("import os\nfor m in (os,):\n    m.spawnl(0, 'sh')\n", "subprocess", 3, id="module-as-loop-variable"),
    pytest.param("import os\ngetattr(os, 'sys' + 'tem')('ls')\n", "dynamic_code", 2, id="getattr-computed-name"),
    pytest.param("import os\ngetattr(os, 'system')('ls')\n", "subprocess", 2, id="getattr-constant-name"),
    pytest.param("getattr(__builtins__, 'eval')('1')\n", "dynamic_code", 1, id="getattr-builtins-eval"),
    pytest.param("x = 1\n__import__('socket').socket()\n", "network", 2, id="dunder-import-socket"),
    pytest.param("__import__('socket')\n", "dynamic_import", 1, id="dunder-import-is-dynamic"),
    pytest.param("m = 'so' + 'cket'\n__import__(m)\n", "dynamic_import", 2, id="dunder-import-computed-name"),
    pytest.param("globals()['__builtins__']['exec']('x = 1')\n", "dynamic_code", 1, id="globals-builtins-exec"),
    pytest.param("import builtins\nbuiltins.open('/etc/passwd')\n", "files", 2, id="builtins-module-open"),
    pytest.param("vars()['open']('/etc/passwd')\n", "files", 1, id="vars-subscript-open"),
    pytest.param("import os\nvars(os)['system']('ls')\n", "subprocess", 2, id="vars-of-module"),
    pytest.param("import os\nos.__dict__['system']('ls')\n", "subprocess", 2, id="module-dict-subscript"),
    pytest.param("import sys\nsys.modules['os'].system('ls')\n", "subprocess", 2, id="sys-modules-os"),
    pytest.param("import sys\nsys.modules['os']\n", "dynamic_import", 2, id="sys-modules-is-dynamic-import"),
    pytest.param("from subprocess import *\nrun(['ls'])\n", "subprocess", 1, id="star-import-subprocess"),
    pytest.param("from os import *\n", "environment", 1, id="star-import-os-brings-environ"),
    pytest.param("import os.path\nos.path.exists('/data')\n", "files", 2, id="attribute-chain-os-path"),
    pytest.param("import importlib as il\nil.import_module('http.client').HTTPConnection('h')\n", "network", 2,
                 id="importlib-alias-network"),
    pytest.param("from importlib import import_module as im\nim('subprocess').run('ls')\n", "subprocess", 2,
                 id="import-module-from-alias"),
    pytest.param("import os\nf = lambda cmd, run=os.system: run(cmd)\n", "subprocess", 2, id="lambda-default-arg"),
    pytest.param("import os\ndef f(o=os):\n    return o.popen('ls')\n", "subprocess", 3, id="default-arg-alias"),
    pytest.param("import functools, os\n@functools.partial(os.system)\ndef f():\n    pass\n", "subprocess", 2,
                 id="decorator-placement"),
    pytest.param("def outer():\n    def inner():\n        class C:\n            def m(self):\n                import socket\n"
                 "        return C\n    return inner\n", "network", 5, id="nested-function-class-method"),
    pytest.param("import os\ncmds = [os.system(c) for c in ['a']]\n", "subprocess", 2, id="comprehension-body"),
    pytest.param("exec('import socket')\n", "network", 1, id="exec-of-a-constant-string"),
    pytest.param("eval(input())\n", "dynamic_code", 1, id="eval-builtin"),
    pytest.param("code = compile('1', 'f', 'eval')\n", "dynamic_code", 1, id="compile-builtin"),
    pytest.param("import pickle as p\np.loads(b'')\n", "serialization", 2, id="pickle-alias-loads"),
    pytest.param("import ctypes\n", "serialization", 1, id="import-ctypes"),
    pytest.param("import marshal\n", "serialization", 1, id="import-marshal"),
    pytest.param("import torch\nstate = torch.load('/data/w.pt')\n", "serialization", 2, id="torch-load-unpickles"),
    pytest.param("import torch\ntorch.save({}, '/tmp/out.pt')\n", "files", 2, id="torch-save-path"),
    pytest.param("import numpy as np\nnp.save('/tmp/x.npy', [1])\n", "files", 2, id="numpy-save"),
    pytest.param("import pandas as pd\npd.read_csv('/data/all_patients.csv')\n", "files", 2, id="pandas-read-csv"),
    pytest.param("def load_data(ctx):\n    frame = ctx.dataset('d')\n    frame.to_csv('/tmp/leak.csv')\n", "files", 3,
                 id="dataframe-to-csv-by-method-name"),
    pytest.param("from pathlib import Path\nPath('/etc/hosts').read_text()\n", "files", 2, id="pathlib-read-text"),
    pytest.param("p = make()\np.write_bytes(b'x')\n", "files", 2, id="unknown-receiver-write-bytes"),
    pytest.param("import shutil\nshutil.copy('a', 'b')\n", "files", 2, id="shutil-copy"),
    pytest.param("import tempfile\ntempfile.mkdtemp()\n", "files", 2, id="tempfile"),
    pytest.param("import urllib.request\nurllib.request.urlopen('http://x')\n", "network", 2, id="urllib-request"),
    pytest.param("import requests as r\nr.post('http://x', data=1)\n", "network", 2, id="requests-alias"),
    pytest.param("import asyncio\nasyncio.open_connection('h', 1)\n", "network", 2, id="asyncio-networking"),
    pytest.param("import pty\npty.spawn('/bin/sh')\n", "subprocess", 2, id="pty-spawn"),
    pytest.param("import os\nos.environ['HOME']\n", "environment", 2, id="os-environ"),
    pytest.param("from os import getenv\ngetenv('TOKEN')\n", "environment", 1, id="from-os-import-getenv"),
    pytest.param("import sys\nn = len(sys.argv)\n", "environment", 2, id="sys-argv"),
    pytest.param("import threading\nthreading.Thread(target=f).start()\n", "concurrency", 2, id="threading-thread"),
    pytest.param("from concurrent.futures import ProcessPoolExecutor\n", "concurrency", 1, id="process-pool"),
    pytest.param("import os\npid = os.fork()\n", "concurrency", 2, id="os-fork"),
    pytest.param("import signal\n", "concurrency", 1, id="import-signal"),
    pytest.param("from torch.utils.data import DataLoader\nDataLoader(ds, num_workers=4)\n", "concurrency", 2,
                 id="dataloader-workers"),
    pytest.param("def load_data(ctx):\n    frame = ctx.dataset('d')\n    rows = frame.head()\n    print(rows)\n", "output", 4,
                 id="print-of-data-through-assignments"),
    pytest.param("def load_data(ctx):\n    print(ctx.dataset('d'))\n", "output", 2, id="print-of-dataset-call"),
    pytest.param("def train(model, data, ctx):\n    x, y = data['train']\n    print(f'{x[0]}')\n", "output", 3,
                 id="fstring-of-train-data"),
    pytest.param("import logging\nlog = logging.getLogger()\ndef evaluate(model, data, ctx):\n    log.info('%s', data)\n",
                 "output", 4, id="logger-of-evaluate-data"),
    pytest.param("import sys\ndef train(model, data, ctx):\n    sys.stderr.write(str(data))\n", "output", 3,
                 id="stderr-write-of-data"),
    pytest.param("def load_data(ctx):\n    frame = ctx.dataset('d')\n    print(len(frame))\n", "output", 3,
                 id="count-of-rows-is-data-derived"),
    pytest.param("import os\nclass C:\n    x = os.system\n", "subprocess", 3, id="reference-without-call"),
    pytest.param("import os\nos.__class__\n", "dynamic_code", 2, id="interpreter-internals"),
    pytest.param("b = __builtins__\nb.open('/etc/passwd')\n", "files", 2, id="builtins-assigned-to-a-name"),
    pytest.param("def g(*, k=__import__):\n    k('socket')\n", "network", 2, id="keyword-only-default-import"),
    pytest.param("import os\n[os][0].system('ls')\n", "subprocess", 2, id="module-in-a-list-judged-by-name"),
    pytest.param("from sys import stdout\ndef train(model, data, ctx):\n    stdout.write(repr(data))\n", "output", 3,
                 id="from-sys-import-stdout-of-data"),
    pytest.param("import os\nos.__getattribute__('system')('ls')\n", "dynamic_code", 2, id="getattribute-dunder"),
    # Libraries re-export the modules they import, and hold real implementations under other paths.
    pytest.param("import torch\ntorch.serialization.load(path)\n", "serialization", 2, id="torch-serialization-load"),
    pytest.param("import pandas as pd\npd.io.pickle.read_pickle(path)\n", "serialization", 2,
                 id="pandas-io-pickle-read-pickle"),
    pytest.param("import torch\ntorch.serialization.os.system('id')\n", "subprocess", 2,
                 id="os-re-exported-by-torch-serialization"),
    pytest.param("from os import path\npath.os.system('id')\n", "subprocess", 2, id="os-re-exported-by-os-path"),
    pytest.param("import torch\ntorch.serialization.os.environ['HOME']\n", "environment", 2,
                 id="environ-through-a-re-exported-os"),
    pytest.param("import torch\ntorch.serialization.pickle.loads(b)\n", "serialization", 2,
                 id="pickle-re-exported-by-torch-serialization"),
    pytest.param("import x\nx.y.subprocess.run(['id'])\n", "subprocess", 2, id="subprocess-re-exported-anywhere"),
    pytest.param("import x\nx.sys.modules['os']\n", "dynamic_import", 2, id="sys-re-exported-anywhere"),
    pytest.param("import numpy as np\nnp.lib._npyio_impl.load(p, allow_pickle=True)\n", "dynamic_code", 2,
                 id="numpy-private-npyio-impl"),
    pytest.param("from numpy.lib import _npyio_impl\n", "dynamic_code", 1, id="import-of-a-private-module"),
    pytest.param("import torch\ngetattr(torch.serialization, '_open_file')\n", "dynamic_code", 2,
                 id="getattr-of-a-private-name"),
    pytest.param("def _open_file():\n    pass\nimport torch\ntorch.serialization._open_file('x', 'wb')\n", "dynamic_code", 4,
                 id="private-function-of-a-module-even-when-the-code-defines-the-name"),
    pytest.param("import torch\ntorch.serialization._open_file('x', 'wb')\n", "files", 2, id="torch-serialization-open-file"),
    pytest.param("import codecs\ncodecs.open('/etc/passwd').read()\n", "files", 2, id="codecs-open"),
    pytest.param("import torch\ntorch.ops.load_library('/tmp/x.so')\n", "serialization", 2, id="torch-ops-load-library"),
    pytest.param("import numpy as np\nnp.ctypeslib.load_library('x', '/tmp')\n", "serialization", 2,
                 id="numpy-ctypeslib-load-library"),
    pytest.param("import torch.utils.cpp_extension as ce\nce.load_inline(name='x', cpp_sources='')\n", "serialization", 2,
                 id="torch-cpp-extension-load-inline"),
    pytest.param("import pandas as pd\npd.io.common.urlopen(url)\n", "network", 2, id="pandas-io-common-urlopen"),
    pytest.param("import pandas as pd\npd.eval('1 + 1')\n", "dynamic_code", 2, id="pandas-eval"),
    pytest.param("def load_data(ctx):\n    frame = ctx.dataset('d')\n    frame.query('@__import__(\"os\").system(\"id\")')\n",
                 "dynamic_code", 3, id="frame-query-runs-an-expression"),
    pytest.param("frame = make()\nframe.eval(expr='a + b')\n", "dynamic_code", 2, id="frame-eval-with-an-argument"),
    pytest.param("import torch\ntorch.package.PackageImporter(p)\n", "serialization", 2, id="torch-package-importer"),
    pytest.param("help('modules')\n", "dynamic_import", 1, id="help-modules-imports-every-module"),
]

BENIGN = [
    pytest.param("import numpy as np\nx = np.zeros(3)\nprint(x.sum())\n", id="numpy-and-print-of-a-computed-value"),
    pytest.param("import os\np = os.path.join('a', 'b')\n", id="os-path-join-is-pure"),
    pytest.param("import re\nr = re.compile('x')\n", id="re-compile-is-not-builtin-compile"),
    pytest.param("import torch\nm = torch.nn.Linear(2, 2)\nm.eval()\n", id="model-eval-is-not-builtin-eval"),
    pytest.param("def load_data(ctx):\n    print('loading')\n    return ctx.dataset('d')\n", id="print-of-a-constant"),
    pytest.param("def train(model, data, ctx):\n    print(ctx.round, ctx.params['lr'])\n", id="print-of-ctx-settings"),
    pytest.param("import json\ns = json.dumps({'a': 1})\n", id="json-dumps-in-memory"),
    pytest.param("x = getattr(object(), 'real', None)\n", id="getattr-constant-name-on-a-value"),
    pytest.param("def load_data(ctx):\n    frame = ctx.dataset('d')\n    text = frame.to_json()\n    return text\n",
                 id="to-json-without-a-path-returns-text"),
    pytest.param("class M:\n    def __init__(self):\n        super().__init__()\n        self._w = 1\n\n"
                 "    def f(self):\n        return self._w\n", id="private-names-the-code-defines-itself"),
    pytest.param("from __future__ import annotations\n", id="future-import"),
    pytest.param("import scipy.signal\nscipy.signal.butter(2, 0.1)\n", id="scipy-signal-is-not-the-signal-module"),
    pytest.param("import torch\ntorch.select(torch.zeros(2, 2), 0, 1)\n", id="torch-select-is-not-the-select-module"),
    pytest.param("import torch\nv = torch.__version__\nn = type(v).__name__\n", id="a-library-version-and-a-type-name"),
]


@pytest.mark.parametrize("source, capability, line", TRICKY)
def test_each_tricky_construct_is_reported_at_its_line(source, capability, line):
    findings = analyze(source)
    assert capability in CAPABILITIES
    assert (capability, line) in {(f.capability, f.line) for f in findings}, findings


@pytest.mark.parametrize("source", BENIGN)
def test_benign_code_reports_nothing(source):
    assert analyze(source) == []


def test_the_corpus_is_large_and_covers_every_capability():
    assert len(TRICKY) >= 25
    assert {p.values[1] for p in TRICKY} == set(CAPABILITIES)


def test_findings_name_what_and_the_federated_cell():
    source = ('"""doc"""\n\n# ---- federated cell 1 ----\nimport numpy as np\n\n'
              "# ---- federated cell 2 ----\nimport os as o\no.system('ls')\n")
    # the marker stands where the cell's %%federated line is, line 1 of the notebook cell
    assert analyze(source) == [Finding("subprocess", "o.system (os.system)", 8, 2, 3)]
    assert analyze(source)[0].to_json() == {"capability": "subprocess", "heading": CAPABILITIES["subprocess"],
                                            "what": "o.system (os.system)", "line": 8, "cell": 2, "cell_line": 3}


def test_code_before_the_first_cell_is_analyzed_without_a_cell():
    assert analyze("import socket\n# ---- federated cell 1 ----\nx = 1\n") == [Finding("network", "import socket", 1, None)]


def test_not_python_is_a_syntax_error():
    with pytest.raises(SyntaxError):
        analyze("def (:\n")


@pytest.fixture(scope="module")
def example_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("example")
    shutil.copy(REPO / "example_notebooks" / "01_breast_cancer.ipynb", folder)
    shutil.copytree(REPO / "example_notebooks" / "samples", folder / "samples")
    return compose.build(folder / "01_breast_cancer.ipynb", folder / "bundle")


def test_the_example_notebook_can_do_nothing_beyond_computing_and_ctx(example_bundle):
    found = capabilities.report(example_bundle)
    assert found.findings == [] and found.captured == []
    assert found.to_json() == {"advice": capabilities.ADVICE, "findings": [], "captured": []}
    assert "not a gate" in capabilities.ADVICE


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "example_notebooks").glob("*.ipynb")))
def test_every_example_notebook_reports_nothing(name, tmp_path):
    shutil.copy(REPO / "example_notebooks" / name, tmp_path)
    shutil.copytree(REPO / "example_notebooks" / "samples", tmp_path / "samples")
    assert capabilities.report(compose.build(tmp_path / name, tmp_path / "bundle")).findings == []


def test_the_example_with_one_added_line_reports_it(example_bundle, tmp_path):
    source = (example_bundle.path / "federated.py").read_text()
    changed = source.replace('    frame = ctx.dataset("breast_cancer")\n',
                             '    frame = ctx.dataset("breast_cancer")\n    print(frame.head())\n')
    line = changed.splitlines().index("    print(frame.head())") + 1
    assert analyze(changed) == [Finding("output", "print(...) of a value derived from site data", line, 3, 4)]


def test_cell_lines_are_the_lines_jupyterlab_shows_in_the_notebook_cell(tmp_path):
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copytree(REPO / "example_notebooks" / "samples", folder / "samples")
    nb = nbformat.read(REPO / "example_notebooks" / "01_breast_cancer.ipynb", as_version=4)
    train = next(c for c in nb.cells if "def train(" in c.source)
    train.source = train.source.replace('    x, y = data["train"]\n', '    x, y = data["train"]\n    import socket\n')
    evaluate = next(c for c in nb.cells if "def evaluate(" in c.source)  # IPython skips blank lines above the magic
    evaluate.source = "\n\n" + evaluate.source.replace("    model.eval()\n", "    model.eval()\n    import subprocess\n")
    nbformat.write(nb, folder / "nb.ipynb")
    built = compose.build(folder / "nb.ipynb", folder / "bundle")
    editor = {what: next(i for i, line in enumerate(cell.source.splitlines(), 1) if line.strip() == what)
              for cell, what in ((train, "import socket"), (evaluate, "import subprocess"))}
    assert editor == {"import socket": 4, "import subprocess": 7}
    module = (built.path / "federated.py").read_text().splitlines()
    found = {f.what: f for f in capabilities.report(built).findings}
    assert {what: (f.cell, f.cell_line) for what, f in found.items()} == {"import socket": (4, 4), "import subprocess": (5, 7)}
    assert all(module[f.line - 1].strip() == what for what, f in found.items())
    # without the build record (a bundle received alone), %%federated is taken as the cell's first line
    (built.records / "build.json").unlink()
    assert {f.what: f.cell_line for f in capabilities.report(built).findings} == {"import socket": 4, "import subprocess": 5}


def test_opaque_captured_values_are_listed_with_their_types_and_caias_loader_is_not_a_finding(write_notebook, tmp_path):
    built = compose.build(write_notebook("free_name"), tmp_path / "b", namespace={"LEARNING_RATE": np.float32(0.5)})
    entry = built.manifest["files"]["captured/LEARNING_RATE.pkl"]
    found = capabilities.report(built)
    assert "def _caia_load_captured" in (built.path / "federated.py").read_text()
    assert found.findings == []
    assert found.captured == [{"name": "LEARNING_RATE", "type": "numpy.float32", "file": "captured/LEARNING_RATE.pkl",
                               "size": entry["size"], "sha256": entry["sha256"]}]


def test_a_loader_written_in_a_cell_is_reported(write_notebook, tmp_path):
    built = compose.build(write_notebook("free_name"), tmp_path / "b", namespace={"LEARNING_RATE": np.float32(0.5)})
    source = (built.path / "federated.py").read_text()
    loader = compose.CAPTURED_LOADER.lstrip("\n")
    after = 1 + source.count("\n# ---- federated cell ")  # markers count only in sequence: the next cell's
    moved = source.replace(loader, "") + f"\n# ---- federated cell {after} ----\n" + loader
    assert {(f.capability, f.cell) for f in analyze(moved)} == {("files", after)}


def test_a_changed_module_is_refused(example_bundle, tmp_path):
    copy = shutil.copytree(example_bundle.path, tmp_path / "b")
    (copy / "federated.py").write_text("import socket\n")
    with pytest.raises(BundleError, match="federated.py does not match manifest.json"):
        capabilities.report(type(example_bundle)(copy, example_bundle.id, example_bundle.manifest))


def test_a_module_python_cannot_parse_is_one_finding_at_its_error(tmp_path):
    from test_review import make_bundle

    built = make_bundle(tmp_path / "b", {"federated.py": b"# ---- federated cell 1 ----\nx = 1\ny = = 2\n"})
    [finding] = capabilities.report(built).findings
    assert (finding.capability, finding.line, finding.cell) == ("dynamic_code", 3, 1)
    assert finding.what.startswith("not Python (")


def test_caia_review_prints_each_finding_and_gives_them_in_json(tmp_path, caia):
    import json

    from test_review import ENTRY_POINTS, make_bundle

    module = "# ---- federated cell 1 ----\nimport socket\n" + ENTRY_POINTS
    built = make_bundle(tmp_path / "b", {"federated.py": module.encode()})
    code, out, _ = caia("review", built.path, "-o", tmp_path / "r.html")
    assert code == 0
    assert "can do: network: import socket (cell 1, line 2; federated.py line 2)" in out.splitlines()
    code, out, _ = caia("review", built.path, "-o", tmp_path / "r.html", "--json")
    assert json.loads(out)["capabilities"] == capabilities.report(built).to_json()
    assert json.loads(out)["capabilities"]["findings"] == [
        {"capability": "network", "heading": "Network", "what": "import socket", "line": 2, "cell": 1, "cell_line": 2}]

"""Local validation: run a bundle, in a fresh kernel via papermill, as a site will run it.

The validation notebook checks each sample against its dataset's standard (`contracts.standard`),
then imports the bundle's own runner and runs one round (evaluate the initial model, train,
evaluate again) on the researcher's synthetic samples. The result is
`records/validation.json`, bound to the bundle id, beside the executed notebook, and the same two
files kept per bundle id in the bundle folder's history (`history`), so a pass is found again when
the notebook returns to code that passed.

Validations run one at a time per bundle folder (so per notebook), each in its own temporary folder,
on a copy of the bundle checked against its id; the server process's working directory is never
changed (the kernel is started in the temporary folder, its IPC sockets named by absolute paths).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import platform
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

from ..contracts.errors import BundleError, Busy, CaiaError, ValidationFailed
from ..contracts.fileset import MODULE, is_statistics
from ..contracts.fsutil import write_atomic, write_json
from ..contracts.version import __version__
from . import history
from .bundle import Bundle, checked_copy, read_build_record

# Bundle folders (resolved) with a validation under way; papermill's own `cwd` argument is not used:
# it changes the whole process's working directory (the Jupyter server validates in a thread pool).
_RUNNING: set[Path] = set()
_RUNNING_LOCK = threading.Lock()
VERSIONS_OF = ("caia-jupyter", "nvflare", "torch", "numpy", "pandas", "papermill", "ipykernel", "cloudpickle")

SETUP = """\
from caia_jupyter.researcher.validation import Stages
from caia_jupyter.site.context import Context
from caia_jupyter.site.dp_sgd import check_validation_round

stages = Stages(report_path, module_path=f"{bundle_dir}/federated.py")"""

STEPS = [
    ("standard", 'with stages.run("standard"):\n    from caia_jupyter.contracts.standard import check_samples\n'
                 '    check_samples({name: spec["path"] for name, spec in datasets.items()}, standards)'),
    ("import", 'with stages.run("import"):\n    from caia_jupyter.site import runtime\n    entry = runtime.load_entry_points(bundle_dir, module_sha256)'),
    ("context", 'with stages.run("context"):\n    ctx = Context("local-validation", params, datasets, rounds=1, privacy=privacy)\n    ctx'),
    ("build_model", 'with stages.run("build_model"):\n    model = runtime.build_model(entry)\n    model'),
    ("load_data", 'with stages.run("load_data"):\n    data = entry.load_data(ctx)'),
    ("round", 'with stages.run("round"):\n    result = runtime.run_round(entry, model, data, ctx)\n    check_validation_round(ctx)\n    result'),
    ("evaluate", 'with stages.run("evaluate"):\n    final = runtime.evaluate(entry, model, data, ctx)\n    stages.finish(result, final)\n    final'),
]


@dataclass(frozen=True)
class ValidationResult:
    bundle_id: str
    passed: bool
    record_path: Path
    notebook_path: Path
    record: dict

    @property
    def error(self) -> str | None:
        return self.record.get("error", {}).get("summary")


class LocalKernelManager(AsyncKernelManager):
    """The validation kernel talks over local sockets (IPC), never TCP, even on loopback."""

    transport = "ipc"


def validation_notebook(bundle: Bundle):
    import nbformat  # here, not at the top: its schema validator takes ~1 s to import

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell(
        f"# Local validation of bundle `{bundle.id}`\n\nOne round of the bundle's own site runner on "
        "synthetic sample data, in a fresh kernel: evaluate the initial model, train, evaluate again."
    ))
    params = nbformat.v4.new_code_cell('bundle_dir = ""\nmodule_sha256 = ""\nreport_path = ""\nparams = {}\ndatasets = {}\nstandards = {}\nprivacy = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    nb.cells.append(nbformat.v4.new_code_cell(SETUP))
    nb.cells += [nbformat.v4.new_code_cell(source) for _, source in STEPS]
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index}"
    return nb


@contextmanager
def one_at_a_time(bundle_path: Path, name: str):
    """Hold the bundle folder `bundle_path` for one validation; raises Busy (naming `name`, the notebook
    or bundle) at once while another validation of it runs in this process. Others are not blocked."""
    key = Path(bundle_path).resolve()
    with _RUNNING_LOCK:
        if key in _RUNNING:
            raise Busy(f"a validation of {name} is already running; wait for it to finish")
        _RUNNING.add(key)
    try:
        yield
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(key)


def validate_notebook(notebook_path: Path, output: Path | None = None, namespace=None, **options) -> ValidationResult:
    """Build the saved notebook's bundle (`compose.build`) and validate it, holding its bundle folder
    throughout (raises Busy while a validation of it runs). `options` go to `validate`."""
    from .compose import build, default_output

    with one_at_a_time(output or default_output(notebook_path), Path(notebook_path).name):
        return _validate(build(notebook_path, output, namespace), **options)


def validate(bundle: Bundle, kernel_name: str = "python3", timeout: int = 600) -> ValidationResult:
    """Run the validation notebook on `bundle` (raises Busy while a validation of its folder runs); write
    records/validation.json and records/validation.ipynb, and keep both in the history under its id."""
    if is_statistics(bundle.manifest["job"]):  # no code to run: the samples against the request
        record = validate_statistics(bundle)
        return ValidationResult(bundle.id, record["passed"], bundle.records / "validation.json", None, record)
    with one_at_a_time(bundle.path, bundle.path.name):
        return _validate(bundle, kernel_name, timeout)


def _validate(bundle: Bundle, kernel_name: str = "python3", timeout: int = 600) -> ValidationResult:
    import nbformat
    from traitlets.config import Config
    import papermill

    build = bundle.record("build.json")
    if not build or build.get("bundle_id") != bundle.id:
        raise BundleError(f"bundle {bundle.path} has no build record for its id; rebuild it with `caia bundle`")
    samples = sample_paths(bundle, build)

    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="caia-validate-") as work:
        work = Path(work)
        source, executed, report = work / "validation.ipynb", work / "executed.ipynb", work / "report.json"
        # The kernel works in `work` and sees the bundle and the samples there under relative
        # names, so the executed notebook, a record that travels in packs, holds no local path. It runs
        # a copy checked against the id: a build meanwhile cannot change what this record is about.
        checked_copy(bundle, work / "bundle")
        (work / "samples").mkdir()
        datasets = {}
        for name, sample in samples.items():
            (work / "samples" / f"{name}.csv").symlink_to(sample)
            datasets[name] = {"path": f"samples/{name}.csv", "columns": bundle.manifest["datasets"][name]["columns"]}
        nbformat.write(validation_notebook(bundle), source)
        failure = None
        # The kernel starts in `work` (nbclient's resources path, no chdir of this process) and its
        # IPC sockets are absolute paths in `work` (relative ones would name this process's cwd).
        where = {"resources": {"metadata": {"path": str(work)}},
                 "config": Config({"LocalKernelManager": {"ip": str(work / "kernel-ipc")}})}
        try:
            papermill.execute_notebook(
                str(source), str(executed), kernel_name=kernel_name, progress_bar=False,
                kernel_manager_class=LocalKernelManager, **where,
                parameters={"bundle_dir": "bundle", "module_sha256": bundle.manifest["files"][MODULE]["sha256"],
                            "report_path": report.name,
                            "params": bundle.manifest["job"]["params"], "datasets": datasets,
                            "standards": {name: f"bundle/{spec['standard']}" for name, spec in
                                          bundle.manifest["datasets"].items() if spec.get("standard")},
                            "privacy": bundle.manifest["job"].get("privacy")},
                execution_timeout=timeout, log_output=False,
            )
        except papermill.PapermillExecutionError as e:
            failure = e
        duration = time.monotonic() - clock
        if not executed.is_file():
            raise CaiaError(f"the validation kernel produced no notebook for {bundle.path}; check that ipykernel works")
        executed_nb = nbformat.read(executed, as_version=4)
        for key in ("input_path", "output_path"):  # papermill's temporary paths
            executed_nb.metadata.get("papermill", {}).pop(key, None)
        executed_bytes = nbformat.writes(executed_nb).encode()
        stages = json.loads(report.read_text()) if report.is_file() else {}

    record = {
        "bundle_id": bundle.id,
        "passed": failure is None and stages.get("passed", False),
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 2),
        "executed_notebook": "validation.ipynb",
        "executed_notebook_sha256": hashlib.sha256(executed_bytes).hexdigest(),
        "versions": versions(),
        "datasets": {name: _sha256(sample) for name, sample in samples.items()},
    }
    if record["passed"]:
        record["result"] = stages["result"]
    else:
        record["error"] = describe_failure(stages.get("error"), failure, build.get("cells", []))
    history.remember_validation(bundle.path, bundle.id, record, executed_bytes)
    kept = history.entry(bundle.path, bundle.id)
    record_path, notebook_path = kept / history.VALIDATION, kept / history.EXECUTED
    if (read_build_record(bundle.path) or {}).get("bundle_id") == bundle.id:  # the folder still holds this id
        bundle.records.mkdir(exist_ok=True)
        notebook_path = write_atomic(bundle.records / "validation.ipynb", executed_bytes)
        record_path = write_json(bundle.records / "validation.json", record)
    return ValidationResult(bundle.id, record["passed"], record_path, notebook_path, record)


def validate_statistics(bundle: Bundle) -> dict:
    """Validate a statistics bundle: each dataset's sample (from its build record) still has the
    requested schema, which the manifest checked against the spec. Writes records/validation.json
    (the record `caia approve` requires); returns the record.
    Raises BundleError when a sample is gone."""
    from ..contracts import schema

    problems = []
    for name, path in sample_paths(bundle, bundle.record("build.json") or {}).items():
        problems += [f"sample of {name!r}: {p}" for p in schema.mismatches(bundle.manifest["datasets"][name]["columns"],
                                                                          schema.read_table(path))]
    record = {"bundle_id": bundle.id, "passed": not problems, "kind": "statistics",
              "validated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              **({"error": {"summary": problems[0]}} if problems else {})}
    write_json(bundle.records / "validation.json", record)
    return record


def sample_paths(bundle: Bundle, build: dict) -> dict[str, Path]:
    """Dataset name -> its sample CSV here, from the build record's relative paths.

    The record gives the notebook relative to the bundle folder and each sample relative to
    the notebook's folder. Raises BundleError when the record is malformed or a sample is gone.
    """
    notebook, samples = build.get("notebook"), build.get("samples")
    if not isinstance(notebook, str) or not isinstance(samples, dict):
        raise BundleError(f"bundle {bundle.path} has a malformed build record; rebuild it with `caia bundle`")
    folder = (bundle.path.resolve() / notebook).parent
    found = {}
    for name in bundle.manifest["datasets"]:
        written = samples.get(name)
        found[name] = folder / written if isinstance(written, str) else None
        if found[name] is None or not found[name].is_file():
            where = found[name] or "not in the build record"
            raise BundleError(f"sample of dataset {name!r} is gone ({where}); restore it and rebuild the bundle")
    return found


def record_of(bundle: Bundle) -> dict | None:
    """The validation record of exactly `bundle.id` (untrusted, unchecked): the bundle folder's own when
    it names this id, else the one kept in the folder's history; None when there is none."""
    record = bundle.record("validation.json")
    if record and record.get("bundle_id") == bundle.id:
        return record
    return history.validation(bundle.path, bundle.id)


def require_passed(bundle: Bundle, how: str = "`caia validate` on it", ask: str | None = None) -> dict:
    """The passing validation record of exactly this bundle id (`record_of`), or a one-line refusal
    (ValidationFailed) saying to run `how`, or, given `ask` (for someone who does not validate,
    such as a site's reviewer), to do that instead."""
    record = record_of(bundle)
    if not record:
        raise ValidationFailed(f"bundle {bundle.short_id} is not validated: {ask or f'run {how}'}")
    if record.get("passed") is not True:
        error = record.get("error")
        summary = error.get("summary") if isinstance(error, dict) else None
        raise ValidationFailed(f"bundle {bundle.short_id} failed validation: {summary}; "
                               f"{ask or f'fix it and run {how} again'}")
    return record


def describe_failure(error: dict | None, failure, cells: list[dict]) -> dict:
    """Name the federated cell (index, first line) and the exception, as papermill names a cell."""
    if not error:
        ename = getattr(failure, "ename", "Error")
        evalue = getattr(failure, "evalue", str(failure))
        return {"stage": "setup", "exception": ename, "message": evalue, "summary": f"{ename}: {evalue}"}
    cell = next((c for c in cells if error.get("line") and c["start"] <= error["line"] <= c["end"]), None)
    where = f"stage {error['stage']}"
    if cell:
        line = error["line"] - cell["start"] + cell.get("cell_line", 2)  # as JupyterLab numbers the cell's lines
        where = (
            f"federated cell {cell['ordinal']} (notebook cell {cell['notebook_index'] + 1}: "
            f"{cell['first_line']!r}) line {line}, in {error['function']}"
        )
        error = {**error, "cell": cell["ordinal"], "notebook_cell": cell["notebook_index"] + 1, "cell_line": line}
    return {**error, "summary": f"{where}: {error['exception']}: {error['message']}"}


def versions() -> dict:
    found = {"python": platform.python_version()}
    for dist in VERSIONS_OF:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    found["caia-jupyter"] = __version__
    return found


class Stages:
    """Inside the validation kernel: run steps and report how the first failure happened."""

    def __init__(self, report_path: str, module_path: str):
        self.report_path = Path(report_path)
        self.module_path = str(Path(module_path).resolve())

    @contextmanager
    def run(self, stage: str):
        try:
            yield
        except BaseException as e:
            frames = [f for f in traceback.extract_tb(e.__traceback__) if str(Path(f.filename).resolve()) == self.module_path]
            last = frames[-1] if frames else None
            line, function = (last.lineno, last.name) if last else _entry_point_line(e)
            self._write({
                "passed": False,
                "error": {
                    "stage": stage,
                    "exception": type(e).__name__,
                    "message": str(e).splitlines()[0] if str(e) else "",
                    "line": line,
                    "function": function,
                },
            })
            raise

    def finish(self, result, final_metrics: dict) -> None:
        self._write({
            "passed": True,
            "result": {
                "num_samples": result.num_samples,
                "initial_evaluation": _finite_or_none(result.eval_metrics),
                "train": _finite_or_none(result.train_metrics),
                "final_evaluation": _finite_or_none(final_metrics),
            },
        })

    def _write(self, report: dict) -> None:
        self.report_path.write_text(json.dumps(report))


def _entry_point_line(error: BaseException) -> tuple[int | None, str | None]:
    """(first line, name) of the entry point a caia ContractError is about (what it returned was
    wrong, so none of its lines is on the traceback); (None, None) for any other error."""
    import sys

    from ..contracts.errors import ContractError

    name = getattr(error, "entry", None) if isinstance(error, ContractError) else None
    code = getattr(getattr(sys.modules.get("federated"), name or "", None), "__code__", None)
    return (code.co_firstlineno, name) if code else (None, None)


def _finite_or_none(metrics: dict[str, float]) -> dict[str, float | None]:
    """Metrics as JSON holds them: a value that is not finite becomes None (missing, as in a run)."""
    return {name: value if math.isfinite(value) else None for name, value in metrics.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

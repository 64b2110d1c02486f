"""Runs a bundle's entry points, the same way at a site and in local validation.

The federated-code contract:

    build_model() -> torch.nn.Module
    load_data(ctx) -> data            # anything; passed back to train and evaluate
    train(model, data, ctx) -> dict   # one round of local training, in place;
                                      # {"num_samples": int 0..2**53-1, at most the rows released
                                      #  to the code; other metrics: number}
    evaluate(model, data, ctx) -> dict  # {metric: number}

A number is an int, a float, a numpy scalar or a 0-d tensor (numpy or torch); `num_samples` is an
integer one (a bool is neither). `num_samples` weighs the site's update in FedAvg and is not
reported as a metric; 0 says the site has nothing to contribute this round (the server leaves its
update out). A metric that is not finite is sent as it is: the server records it as missing.
The model's state_dict travels as `contracts.tensors` converts it (refusing what caia cannot average).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import types
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..contracts.errors import ContractError
from ..contracts.failures import ENTRY_POINTS
from ..contracts.fileset import MODULE
from ..contracts.metric_names import valid_name
from ..contracts.privacy import EPSILON
from ..contracts.tensors import dtypes_of, to_arrays, to_tensors
from ..contracts.weights import MAX_NUM_SAMPLES


@dataclass(frozen=True)
class EntryPoints:
    build_model: Callable
    load_data: Callable
    train: Callable
    evaluate: Callable


@dataclass(frozen=True)
class RoundResult:
    num_samples: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    weights: dict = field(default_factory=dict, repr=False)  # {entry: numpy array}, as it travels
    # With DP (ctx.privacy): the code's accountant history after this round, as its process reports
    # it ([[noise_multiplier, sample_rate, steps], ...]; untrusted: the site accounts it, `dp_sgd.account`); None without DP
    dp_history: list | None = None


def reserved_metrics(metrics: dict, entry: str, private: bool) -> None:
    """Raise ContractError (bad_metrics) when a DP bundle's code reports a metric under EPSILON."""
    if private and EPSILON in metrics:
        raise ContractError(f"{entry}(model, data, ctx) returned a metric named {EPSILON!r}, which caia reserves for the "
                            "privacy spent with differential privacy; rename it", failure="bad_metrics", entry=entry)


def build_model(entry: EntryPoints):
    import torch

    model = entry.build_model()
    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"build_model() must return a torch.nn.Module, not {type(model).__name__}",
                            failure="not_a_module", entry="build_model")
    dtypes_of(model.state_dict(), "build_model")  # refuses what caia cannot average, naming it
    return model


def run_round(entry: EntryPoints, model, data, ctx) -> RoundResult:
    """One round at a site: evaluate the incoming global model on local data, then train on it."""
    eval_metrics = _metrics(entry.evaluate(model, data, ctx), "evaluate")
    if getattr(ctx, "private_training", None) is not None:
        ctx.private_training.model = model  # the one model make_private may wrap: the one caia sends
    trained = entry.train(model, data, ctx)
    if not isinstance(trained, dict) or "num_samples" not in trained:
        raise ContractError(
            "train(model, data, ctx) must return a dict with 'num_samples' (examples trained on) "
            f"and numeric metrics, not {_shown(trained)}", failure="bad_num_samples", entry="train"
        )
    trained = dict(trained)
    returned = trained.pop("num_samples")
    num_samples = _scalar(returned)
    if not isinstance(num_samples, int) or not 0 <= num_samples <= MAX_NUM_SAMPLES:  # the bound the server applies
        shown = num_samples if isinstance(num_samples, (int, float)) else _shown(returned)
        raise ContractError(f"train(model, data, ctx) returned num_samples = {shown}; it must be an integer from 0 to "
                            f"{MAX_NUM_SAMPLES} (an int, a numpy integer or a 0-d integer tensor)",
                            failure="bad_num_samples", entry="train")
    train_metrics = _metrics(trained, "train")
    reserved_metrics(eval_metrics, "evaluate", _private(ctx))
    reserved_metrics(train_metrics, "train", _private(ctx))
    return RoundResult(num_samples, train_metrics, eval_metrics, to_arrays(model.state_dict(), "train"))


def _private(ctx) -> bool:
    """Whether the bundle requests differential privacy (`ctx.privacy`)."""
    return getattr(ctx, "privacy", None) is not None


def evaluate(entry: EntryPoints, model, data, ctx) -> dict[str, float]:
    metrics = _metrics(entry.evaluate(model, data, ctx), "evaluate")
    reserved_metrics(metrics, "evaluate", _private(ctx))
    return metrics


def load_entry_points(bundle_dir: str | Path, expected_sha256: str | None = None) -> EntryPoints:
    """Load a bundle's federated.py from its source bytes and return its entry points.

    The module is compiled from the bytes read here, after checking them against
    `expected_sha256` (the hash the site's guard admitted, or the manifest's) when given: no
    `__pycache__` is read or written, so a bundle folder stays exactly as approved (read-only
    works) and no shadowing `.pyc` can run instead of the reviewed source.
    Raises ContractError if the bytes differ or an entry point is missing.
    """
    path = Path(bundle_dir).resolve() / MODULE
    source = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(source).hexdigest() != expected_sha256:
        raise ContractError(f"{MODULE} is not the file the site admitted; the run stops here")
    module = types.ModuleType("federated")
    module.__file__ = str(path)
    sys.modules["federated"] = module  # as `import federated` would, for pickling by reference
    exec(compile(source, str(path), "exec", dont_inherit=True), module.__dict__)
    missing = [name for name in ENTRY_POINTS if not callable(getattr(module, name, None))]
    if missing:
        raise ContractError(f"{MODULE} does not define {', '.join(missing)}")
    return EntryPoints(**{name: getattr(module, name) for name in ENTRY_POINTS})


def _metrics(value, name: str) -> dict[str, float]:
    call = f"{name}(model, data, ctx)"

    def broken(message: str):
        return ContractError(message, failure="bad_metrics", entry=name)

    if not isinstance(value, dict):
        raise broken(f"{call} must return a dict of numeric metrics, not {_shown(value)}")
    out = {}
    for key, returned in value.items():
        if not valid_name(key):
            raise broken(f"{call} returned a metric named {key!r}; names must be identifiers of at most 64 ASCII "
                         "letters, digits and _")
        number = _scalar(returned)
        if number is None:
            raise broken(f"{call} returned metric {key!r} = {_shown(returned)}; a metric must be a number: an int, "
                         "a float, a numpy scalar or a 0-d tensor")
        try:
            out[key] = float(number)
        except OverflowError:  # an int too large for a float: not finite, as the server will record it
            out[key] = math.inf
    return out


def _scalar(value) -> int | float | None:
    """The Python int or float that `value` holds: an int, a float, a numpy scalar, or a 0-d numpy
    array or torch tensor of an integer or floating dtype; None for anything else (a bool too)."""
    import numpy as np
    import torch

    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = value.item() if value.ndim == 0 else None
    elif isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _shown(value) -> str:
    if type(value).__name__ in ("Tensor", "ndarray"):  # a value of many numbers: its shape tells which
        return f"a {type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


class Failed(Exception):
    """The bundle's run failed at this site. `report` is what may leave (contracts.failures: entry
    point, round, category); `record` the whole story (exception, message, traceback, or what the
    sandbox stopped), which stays at the site."""

    def __init__(self, report: dict, record: dict):
        super().__init__(report["category"])
        self.report, self.record = report, record


class LocalCode:
    """One site's run of the bundle's entry points in this process: its module, model, data and `ctx`.

    Each step raises Failed, never anything else, when it fails. The site's runtime uses it directly
    (sandbox policy "off") or inside the sandboxed process (`confined`), whose `sandbox.Sandbox` has the same steps.
    Weights come and go as `contracts.tensors` arrays ({entry: numpy array}).
    """

    def __init__(self, bundle_dir: str | Path, module_sha256: str, ctx):
        self.bundle_dir, self.module_sha256, self.ctx = Path(bundle_dir), module_sha256, ctx
        self.entry = self.model = self.data = None

    def start(self) -> None:
        """Load federated.py (checked against `module_sha256`), build the model, load the data."""
        with failing(None, None):
            self.entry = load_entry_points(self.bundle_dir, self.module_sha256)
        with failing(self.entry, None):
            self.model = build_model(self.entry)
            self.data = self.entry.load_data(self.ctx)

    def round(self, weights: dict, round: int) -> RoundResult:
        """Round `round` (from 0): evaluate the global `weights`, then train on them; with DP, the
        result holds the history of `ctx`'s accountant (which the site's runtime accounts)."""
        self._load(weights, round)
        with failing(self.entry, round):
            result = run_round(self.entry, self.model, self.data, self.ctx)
        if self.ctx.privacy is None:
            return result
        with failing(None, round):
            return dataclasses.replace(result, dp_history=self.ctx.private_training.history())

    @property
    def released_rows(self) -> int:
        """Rows of the released datasets the code read (`Context.released_rows`)."""
        return self.ctx.released_rows

    def evaluate(self, weights: dict, round: int) -> dict[str, float]:
        """The final evaluation of the global `weights`, after `round` rounds."""
        self._load(weights, round)
        with failing(self.entry, round):
            return evaluate(self.entry, self.model, self.data, self.ctx)

    def close(self) -> None:
        """Nothing to release in this process."""

    def _load(self, weights: dict, round: int) -> None:
        self.ctx.round = round
        with failing(None, round):
            self.model.load_state_dict(to_tensors(weights, dtypes_of(self.model.state_dict(), "runtime")))


@contextmanager
def failing(entry: EntryPoints | None, round: int | None):
    """Turn any exception raised inside into Failed: a report of the closed vocabulary of
    caia_jupyter.contracts.failures (the entry point, the round and a category: the researcher's
    own exception, or caia's reason) and the whole story (exception type, message, traceback)."""
    try:
        yield
    except Failed:
        raise
    except Exception as e:
        import traceback

        from ..contracts.errors import CaiaError

        caia = isinstance(e, CaiaError)
        where = getattr(e, "entry", None) if caia else None
        where = where if where in ENTRY_POINTS else _entry_point_running(e, entry)
        category = e.failure if caia else ("raised" if where != "runtime" else "site_error")
        raise Failed({"entry": where, "round": round, "category": category},
                     {"exception": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}) from None


def _entry_point_running(error: Exception, entry: EntryPoints | None) -> str:
    """The outermost entry point on `error`'s traceback, or "runtime" when none is (caia's own code,
    or the module still loading when `entry` is None)."""
    codes, frame = [], error.__traceback__
    while frame is not None:
        codes.append(frame.tb_frame.f_code)
        frame = frame.tb_next
    return outermost_entry(codes, entry) if entry else "runtime"


def outermost_entry(codes, entry: EntryPoints) -> str:
    """The first of `codes` (code objects, outermost first) that is one of `entry`'s entry points, or "runtime"."""
    import inspect

    names = {}
    for name in ENTRY_POINTS:
        names.setdefault(getattr(inspect.unwrap(getattr(entry, name)), "__code__", None), name)
    return next((names[code] for code in codes if code in names), "runtime")

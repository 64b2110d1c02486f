"""Runs a bundle's entry points, the same way at a site and in local validation.

The federated-code contract:

    build_model() -> torch.nn.Module
    load_data(ctx) -> data            # anything; passed back to train and evaluate
    train(model, data, ctx) -> dict   # one round of local training, in place;
                                      # {"num_samples": int, other metrics: float}
    evaluate(model, data, ctx) -> dict  # {metric: float}

`num_samples` weighs the site's update in FedAvg and is not reported as a metric.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ContractError


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


def build_model(entry: EntryPoints):
    import torch

    model = entry.build_model()
    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"build_model() must return a torch.nn.Module, not {type(model).__name__}")
    return model


def run_round(entry: EntryPoints, model, data, ctx) -> RoundResult:
    """One round at a site: evaluate the incoming global model on local data, then train on it."""
    eval_metrics = _metrics(entry.evaluate(model, data, ctx), "evaluate(model, data, ctx)")
    trained = entry.train(model, data, ctx)
    if not isinstance(trained, dict) or "num_samples" not in trained:
        raise ContractError(
            "train(model, data, ctx) must return a dict with 'num_samples' (examples trained on) "
            f"and numeric metrics, not {_shown(trained)}"
        )
    trained = dict(trained)
    num_samples = trained.pop("num_samples")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ContractError(f"train() returned num_samples={num_samples!r}; it must be a positive int")
    return RoundResult(num_samples, _metrics(trained, "train(model, data, ctx)"), eval_metrics)


def evaluate(entry: EntryPoints, model, data, ctx) -> dict[str, float]:
    return _metrics(entry.evaluate(model, data, ctx), "evaluate(model, data, ctx)")


def import_runner(bundle_dir: str | Path):
    """Import a bundle's caia_runner (and with it federated.py) from `bundle_dir`."""
    bundle_dir = str(Path(bundle_dir).resolve())
    for name in ("caia_runner", "federated"):
        sys.modules.pop(name, None)
    sys.path.insert(0, bundle_dir)
    try:
        return importlib.import_module("caia_runner")
    finally:
        sys.path.remove(bundle_dir)


def _metrics(value, call: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ContractError(f"{call} must return a dict of numeric metrics, not {_shown(value)}")
    out = {}
    for key, number in value.items():
        try:
            number = float(number)
        except (TypeError, ValueError):
            raise ContractError(f"{call} returned metric {key!r} = {_shown(number)}; metrics must be numbers") from None
        if not isinstance(key, str) or not math.isfinite(number):
            raise ContractError(f"{call} returned metric {key!r} = {number}; names must be str and values finite")
        out[key] = number
    return out


def _shown(value) -> str:
    return f"a {type(value).__name__}"

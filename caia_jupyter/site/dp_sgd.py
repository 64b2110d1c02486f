"""DP-SGD at a site, with Opacus: what `ctx.make_private` hands out, and the site's own accounting.

Two sides. The code's side (`PrivateTraining`, behind `ctx.make_private`, in the sandboxed process
when there is one): one Opacus `PrivacyEngine` per run whose RDP accountant sees every DP-SGD step
of the whole run, with the noise calibrated for the whole run: `rounds * local_epochs` epochs at
this site's sample rate (1 / batches per epoch), by Opacus's `get_noise_multiplier`. The site's
side (`account`, in the site's runtime outside the sandbox): the code's process reports its
accountant's history, which the site reads as untrusted input, checks against the release (each
noise multiplier at least the one the site calibrates for the release at that sample rate, each
sample rate at least one over the rows the site released) and turns into epsilon itself, with
Opacus's RDP accountant at the release's delta. RDP, not Opacus's default PRV: its epsilon is an
upper bound that is exact to compute, never decreases as steps are added, and is cheap to ask for
every round. Imported only when a bundle asks for DP.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

from ..contracts.errors import ContractError
from ..contracts.privacy import ACCOUNTANT, DifferentialPrivacy, finite_number

MAX_HISTORY = 1000  # entries of a reported accountant history (an honest run has one per sample rate and noise)
MAX_STEPS = 10**12  # DP-SGD steps of one entry
# torch warns on every backward through Opacus's per-example gradient hooks on a first layer whose
# input needs no gradient; the hook is right there (the gradients are the parameters')
HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to module outputs since no inputs require gradients"


@dataclass(frozen=True)
class Spent:
    """The privacy a run spent at a site, as the site accounts it: epsilon at the release's delta,
    and the accountant history it accepted ((noise_multiplier, sample_rate, steps), ...)."""

    epsilon: float = 0.0
    history: tuple = ()

    @property
    def steps(self) -> int:
        """DP-SGD steps of the run so far."""
        return sum(steps for _, _, steps in self.history)


@functools.lru_cache(maxsize=64)
def _calibrated(epsilon: float, delta: float, steps: int, sample_rate: float) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Optimal order is the largest alpha": the bound is still one
        return get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                    steps=steps, accountant=ACCOUNTANT)


def calibrated_noise(request: dict, rounds: int, sample_rate: float) -> float:
    """The noise multiplier (a float > 0) that keeps `rounds * request["local_epochs"]` epochs of
    DP-SGD at `sample_rate` within `request`'s (epsilon, delta) (a job.privacy dict).

    Raises ContractError (one line, with the numbers) when no noise keeps the run within it."""
    epochs = rounds * request["local_epochs"]
    try:  # in steps, rounded as `calibrated_steps` counts them: Opacus's epochs / sample_rate truncates (117 batches x 5 = 584)
        return _calibrated(request["epsilon"], request["delta"], round(epochs / sample_rate), sample_rate)
    except ValueError:  # Opacus: "The privacy budget is too low."
        raise ContractError(
            f"the privacy budget is too low: epsilon {request['epsilon']:.6g} at delta {request['delta']:.6g} cannot cover "
            f"{epochs} passes (rounds {rounds} x local_epochs {request['local_epochs']}) at sample rate {sample_rate:.6g} "
            "(1/batches per pass); request a larger epsilon, fewer rounds or local_epochs, or use smaller batches",
            failure="contract", entry="train") from None


def epsilon_of(history, delta: float) -> float:
    """Epsilon at `delta` of an accountant `history` ((noise_multiplier, sample_rate, steps), ...), by Opacus's RDP accountant."""
    from opacus.accountants import RDPAccountant

    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Optimal order is the largest alpha"
        try:
            epsilon = float(accountant.get_epsilon(delta))
        except (ArithmeticError, ValueError):  # a history no honest run reports (noise 1e300, 10**12 steps)
            return math.inf
    return epsilon if math.isfinite(epsilon) else math.inf


def parse_history(value) -> tuple:
    """An accountant history as the code's process reports it -> ((noise_multiplier, sample_rate, steps), ...).

    Raises ContractError (not_private) for anything else: a list of at most MAX_HISTORY
    [noise_multiplier > 0, 0 < sample_rate <= 1, 1 <= steps <= MAX_STEPS]."""
    entries = value if isinstance(value, (list, tuple)) and len(value) <= MAX_HISTORY else None
    parsed = []
    for entry in entries if entries is not None else [None]:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 3
        sigma, rate, steps = entry if ok else (None, None, None)
        if not (ok and finite_number(sigma) and sigma > 0 and finite_number(rate) and 0 < rate <= 1 and isinstance(steps, int)
                and not isinstance(steps, bool) and 1 <= steps <= MAX_STEPS):
            raise ContractError("the code's process reported no readable privacy accounting", failure="not_private",
                                entry="train")
        parsed.append((float(sigma), float(rate), steps))
    return tuple(parsed)


def extends(before: tuple, after: tuple) -> bool:
    """Whether accountant history `after` continues `before` (Opacus adds steps to its last entry, or entries)."""
    if not before:
        return True
    last = len(before) - 1
    return (len(after) > last and after[:last] == before[:last] and after[last][:2] == before[last][:2]
            and after[last][2] >= before[last][2])


def account(request: dict, rounds: int, before: Spent, reported, released_rows: int) -> Spent:
    """The site's accounting after a round: `reported` (the code's accountant history, untrusted)
    checked against the release's `request` (job.privacy) over `rounds` rounds and what the site
    accepted `before`, with its epsilon computed here at the release's delta.

    Raises ContractError (failure "not_private", one line) when the history is unreadable, does not
    continue `before`, holds no new DP-SGD step (whatever num_samples says: the weights would leave),
    samples below 1/`released_rows` (the rows the site released to the code: a loader that is not
    over them), or adds less noise than the site calibrates for the release at that sample rate."""
    history = parse_history(reported)
    if not extends(before.history, history):
        raise ContractError("the code's accountant history does not continue the one the site accounted before",
                            failure="not_private", entry="train")
    spent = Spent(0.0, history)
    if not released_rows:
        raise ContractError("train's DP-SGD ran on no dataset the site released (the code read none with ctx.dataset)",
                            failure="not_private", entry="train")
    if spent.steps <= before.steps:
        raise ContractError("train took no DP-SGD step this round; train with what ctx.make_private(model, optimizer, "
                            "data_loader) returns", failure="not_private", entry="train")
    for sigma, rate, _ in history:
        if rate * released_rows < 1:
            raise ContractError(f"train's DP-SGD sample rate {rate:.6g} is below 1/{released_rows} (one over the rows the site "
                                "released); give ctx.make_private a loader over the released data", failure="not_private",
                                entry="train")
        needed = calibrated_noise(request, rounds, rate)
        if sigma < needed * (1 - 1e-9):
            raise ContractError(f"train's DP-SGD noise multiplier {sigma:.6g} is below the {needed:.6g} the site calibrates "
                                f"at sample rate {rate:.6g}", failure="not_private", entry="train")
    return Spent(epsilon_of(history, request["delta"]), history)


def calibrated_steps(request: dict, rounds: int, spent: Spent) -> int:
    """The DP-SGD steps the noise was calibrated for: `rounds * local_epochs` passes at the last sample rate of `spent`."""
    return round(rounds * request["local_epochs"] / spent.history[-1][1]) if spent.history else 0


def check_one_round(request: dict, spent: Spent) -> None:
    """Local validation's check of its one round (`spent`, accounted by `account` over one round):
    raise ContractError (one line) when train took more DP-SGD steps than `local_epochs` passes
    over its loader take (Opacus's Poisson sampling takes len(loader) steps a pass, whatever the
    batches' sizes)."""
    expected = calibrated_steps(request, 1, spent)
    if spent.steps > expected:
        raise ContractError(
            f"train took {spent.steps} DP-SGD steps in one round where local_epochs={request['local_epochs']} passes over "
            f"its loader take {expected}: the budget is calibrated for local_epochs passes per round; train "
            "ctx.privacy['local_epochs'] passes, or raise local_epochs on the %%federated line", failure="budget_spent",
            entry="train")


def check_validation_round(ctx) -> Spent | None:
    """Local validation's checks of its one round with `ctx` (a `Context` of rounds=1): the site's
    own (`account`) and `check_one_round`. Returns the privacy spent, None without DP; raises
    ContractError (one line) as they do."""
    if ctx.privacy is None:
        return None
    request = dict(ctx.privacy)
    spent = account(request, 1, Spent(), ctx.private_training.history(), ctx.released_rows)
    check_one_round(request, spent)
    return spent


class PrivateTraining:
    """One site's DP-SGD over a run of `rounds` rounds, for `request` (a `DifferentialPrivacy`), in
    the code's process. `model` is the model the runtime hands to train (`runtime.run_round` sets
    it): make_private refuses any other."""

    def __init__(self, request: DifferentialPrivacy, rounds: int):
        from opacus import PrivacyEngine

        self.request, self.rounds = request, rounds
        with warnings.catch_warnings():  # "secure RNG turned off": the noise comes from torch's generator (README)
            warnings.simplefilter("ignore")
            self.engine = PrivacyEngine(accountant=ACCOUNTANT)
        self.noise_multiplier: float | None = None
        self.model = None
        self._wrapped = None  # (model, its GradSampleModule): the same model each round keeps its one wrapping

    def make_private(self, model, optimizer, data_loader, released_rows: int):
        """Opacus's (model, optimizer, data_loader) for DP-SGD: a GradSampleModule around `model`
        (the same one each round for the same model; `model` put in training mode), a DPOptimizer clipping per-example gradients
        to max_grad_norm and adding the calibrated noise, a Poisson-sampling DataLoader.

        Raises ContractError (one line) when `data_loader` is not a non-empty torch DataLoader over
        at most `released_rows` rows, `model` is not the model train received, the optimizer does not
        hold the model's parameters, the budget is too low for the run (with the numbers), or the
        model holds a layer Opacus cannot train privately (failure "dp_unsupported", naming the
        layers)."""
        import torch
        from opacus.grad_sample import GradSampleModule

        if not isinstance(data_loader, torch.utils.data.DataLoader) or len(data_loader) == 0:
            raise ContractError("ctx.make_private(model, optimizer, data_loader) needs a torch DataLoader with at least "
                                f"one batch, not {type(data_loader).__name__}", failure="contract", entry="train")
        rows = len(data_loader.dataset)
        if rows > released_rows:
            raise ContractError(f"ctx.make_private: the loader holds {rows} rows, more than the {released_rows} the site "
                                "released to this bundle; give it a loader over the released data", failure="contract",
                                entry="train")
        if isinstance(model, GradSampleModule):
            model = model._module
        if self.model is not None and model is not self.model:
            raise ContractError("ctx.make_private was given a model other than the one train received; pass train's "
                                "model", failure="not_private", entry="train")
        model.train()  # for training: evaluate, which runs first each round, may have left it in eval mode
        unsupported(model)
        if self._wrapped is not None and self._wrapped[0] is model:
            model = self._wrapped[1]
        if self.noise_multiplier is None:
            self.noise_multiplier = calibrated_noise(self.request.model_dump(), self.rounds, 1 / len(data_loader))
        warnings.filterwarnings("ignore", message=HOOK_WARNING, category=UserWarning)
        try:
            private = self.engine.make_private(module=model, optimizer=optimizer, data_loader=data_loader,
                                               noise_multiplier=self.noise_multiplier,
                                               max_grad_norm=self.request.max_grad_norm)
        except ValueError as e:  # e.g. the optimizer's parameters are not the model's
            raise ContractError(f"ctx.make_private: {e}", failure="contract", entry="train") from None
        self._wrapped = (private[0]._module, private[0])
        return private

    def history(self) -> list[list]:
        """The accountant's history: [[noise_multiplier, sample_rate, steps], ...], what the site's runtime accounts."""
        return [list(entry) for entry in self.engine.accountant.history]

    def spent(self) -> tuple[float, int]:
        """(epsilon spent so far at the request's delta, DP-SGD steps taken so far), as this process counts them."""
        history = self.engine.accountant.history
        return epsilon_of(history, self.request.delta), sum(steps for _, _, steps in history)


def unsupported(model) -> None:
    """Raise ContractError (dp_unsupported, one line) when Opacus cannot train `model` with DP:
    BatchNorm layers named with the fix, anything else in Opacus's words."""
    from opacus.validators import ModuleValidator
    from torch.nn.modules.batchnorm import _BatchNorm

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    norms = [f"{name or 'the model'} ({type(layer).__name__})" for name, layer in model.named_modules()
             if isinstance(layer, _BatchNorm)]
    if norms:
        raise ContractError(f"Opacus cannot train BatchNorm layers with differential privacy (they mix the examples of a "
                            f"batch): {', '.join(norms)}; use GroupNorm in build_model, or "
                            "opacus.validators.ModuleValidator.fix(model)", failure="dp_unsupported", entry="train")
    said = "; ".join(" ".join(str(e).split()) for e in errors)
    raise ContractError(f"Opacus cannot train this model with differential privacy: {said}", failure="dp_unsupported",
                        entry="train")

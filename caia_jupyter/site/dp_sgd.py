"""DP-SGD at a site, with Opacus: what `ctx.make_private` hands out and what the site's runtime reads back.

One `PrivateTraining` per run at a site holds one Opacus `PrivacyEngine` whose RDP accountant
sees every DP-SGD step of the whole run. RDP, not Opacus's default PRV: its epsilon is an upper
bound that is exact to compute (no numerical error term), never decreases as steps are added, and
is cheap to ask for every round; the noise is calibrated with the same accountant. The noise
multiplier is computed once, at the first `make_private`, by Opacus's `get_noise_multiplier` for the
whole run: `rounds * local_epochs` epochs at this site's sample rate (1 / batches per epoch), so
the run ends within the requested epsilon. Imported only when a bundle asks for DP.
"""

from __future__ import annotations

import warnings

from ..contracts.errors import ContractError
from ..contracts.privacy import DifferentialPrivacy

ACCOUNTANT = "rdp"


class PrivateTraining:
    """One site's DP-SGD over a run of `rounds` rounds, for `request` (a `DifferentialPrivacy`)."""

    def __init__(self, request: DifferentialPrivacy, rounds: int):
        from opacus import PrivacyEngine

        self.request, self.rounds = request, rounds
        with warnings.catch_warnings():  # "secure RNG turned off": the noise comes from torch's generator (README)
            warnings.simplefilter("ignore")
            self.engine = PrivacyEngine(accountant=ACCOUNTANT)
        self.noise_multiplier: float | None = None
        self._wrapped = None  # (model, its GradSampleModule): the same model each round keeps its one wrapping

    def make_private(self, model, optimizer, data_loader):
        """Opacus's (model, optimizer, data_loader) for DP-SGD: a GradSampleModule around `model`
        (the same one each round for the same model; `model` put in training mode), a DPOptimizer clipping per-example gradients
        to max_grad_norm and adding the calibrated noise, a Poisson-sampling DataLoader.

        Raises ContractError (one line) when `data_loader` is not a non-empty torch DataLoader, the
        optimizer does not hold the model's parameters, or the model holds a layer Opacus cannot
        train privately (failure "dp_unsupported", with Opacus's own explanation)."""
        import torch
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.grad_sample import GradSampleModule
        from opacus.validators import ModuleValidator

        if not isinstance(data_loader, torch.utils.data.DataLoader) or len(data_loader) == 0:
            raise ContractError("ctx.make_private(model, optimizer, data_loader) needs a torch DataLoader with at least "
                                f"one batch, not {type(data_loader).__name__}", failure="contract", entry="train")
        if isinstance(model, GradSampleModule):
            model = model._module
        model.train()  # for training: evaluate, which runs first each round, may have left it in eval mode
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ContractError(f"Opacus cannot train this model with differential privacy: {'; '.join(map(str, errors))}",
                                failure="dp_unsupported", entry="train")
        if self._wrapped is not None and self._wrapped[0] is model:
            model = self._wrapped[1]
        sample_rate = 1 / len(data_loader)
        if self.noise_multiplier is None:
            self.noise_multiplier = get_noise_multiplier(
                target_epsilon=self.request.epsilon, target_delta=self.request.delta, sample_rate=sample_rate,
                epochs=self.rounds * self.request.local_epochs, accountant=ACCOUNTANT)
        try:
            private = self.engine.make_private(module=model, optimizer=optimizer, data_loader=data_loader,
                                               noise_multiplier=self.noise_multiplier,
                                               max_grad_norm=self.request.max_grad_norm)
        except ValueError as e:  # e.g. the optimizer's parameters are not the model's
            raise ContractError(f"ctx.make_private: {e}", failure="contract", entry="train") from None
        self._wrapped = (private[0]._module, private[0])
        return private

    def spent(self) -> tuple[float, int]:
        """(epsilon spent so far at the request's delta, DP-SGD steps taken so far) of this run here."""
        steps = sum(count for _, _, count in self.engine.accountant.history)
        return (float(self.engine.get_epsilon(self.request.delta)) if steps else 0.0), steps

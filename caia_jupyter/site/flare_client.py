"""The NVFLARE Client API loop at a site: what a bundle's `caia_runner.py` starts.

Every round it hands the global weights to the bundle's code and sends back its weights and
metrics; the code runs where the site's release says (`sandbox`). Whatever fails, the site keeps
the whole story and sends only a report of the closed vocabulary (`contracts.failures`). With the
first task it sends the release's reports of data admitted breaking its standard (`contracts.standard`).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from ..contracts.errors import ContractError
from ..contracts.failures import FAILURE_FILE, FAILURE_TAG
from ..contracts.fileset import MODULE
from ..contracts.privacy import EPSILON
from ..contracts.standard import STANDARD_TAG
from .context import Context
from .privacy_policy import check_job_scope
from .release import Release
from .runtime import EntryPoints, Failed, LocalCode, RoundResult, failing
from .sandbox import Sandbox


class SiteStopped(Exception):
    """This site stopped its part of the run: the full record is kept at the site, the report sent."""


def run_site(runner_file: str) -> None:
    """The NVFLARE Client API loop at a site: every round evaluate, train, send weights and metrics.

    Serves at most the approved number of train tasks (the release's rounds) and then one final
    evaluation: the server belongs to the researcher, the limit to the site. The bundle's code runs
    as the release says: in a sandboxed process of its own (`sandbox`), or in this one (policy "off").
    When anything fails, the site keeps the story, sends its report and returns: NVFLARE then answers
    the task as failed with its own fixed words, and no text of the failure (nor a site path in a
    traceback) leaves.
    """
    sys.dont_write_bytecode = True  # nothing the job imports from here on writes into its app
    app_dir = Path(runner_file).resolve().parents[1]
    try:
        with failure_record(app_dir, None, round=None):  # whatever is not caught closer
            check_job_scope(app_dir)  # the scope NVFLARE applies to what leaves is the site's own
            _serve(app_dir)
    except SiteStopped:
        return


def _serve(app_dir: Path) -> None:
    import json

    import nvflare.client as flare
    from nvflare.apis.analytix import AnalyticsDataType
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.client.tracking import SummaryWriter

    flare.init()
    release = Release.read(app_dir)
    if release.site != flare.get_site_name():
        raise ContractError(f"the release is for {release.site}, but this is {flare.get_site_name()}")
    code = _code_of(app_dir, release)
    writer = SummaryWriter()

    def report(metrics: dict, round: int):  # one message per round, whatever the number of metrics
        writer.add_scalars("metrics", metrics, global_step=round)

    def next_task():
        """The next task, or None once NVFLARE ends the job (its in-process API raises to say it aborts)."""
        try:
            return flare.receive() if flare.is_running() else None
        except RuntimeError:  # the job is stopping elsewhere: nothing failed here, nothing to report
            return None

    try:
        code.start()
        trained, evaluated, first = 0, False, None
        spent = None  # with DP: the privacy this run spent here (`dp_sgd.Spent`), as of the last update sent
        if release.privacy:
            from .dp_sgd import Spent

            spent = Spent()
        while (incoming := next_task()) is not None:
            if first is None:  # the first task: the server listens now (a record sent before init settles can be lost)
                for broken in release.standard_reports:  # data admitted breaking its standard: the researcher is told which rules
                    flare.log(key=STANDARD_TAG, value=json.dumps(broken), data_type=AnalyticsDataType.TEXT)
            first = first or incoming.params  # the initial global model: in clear, also under encryption
            params = in_clear(incoming.params, first) if release.encryption else incoming.params
            final = flare.is_evaluate()  # the final global model, after the last round
            if (final and (evaluated or trained < release.rounds)) or (not final and trained >= release.rounds):
                raise ContractError(f"the server asked for a {'final evaluation' if final else 'train task'} after "
                                    f"{trained} of {release.rounds} approved rounds", failure="beyond_release", entry="runtime")
            if final:
                evaluated = True
                metrics = code.evaluate(params, trained)
                report(metrics, trained)
                # encrypted: the researcher's global model is the final one as sites decrypt it (`aggregator.he`)
                flare.send(FLModel(params=params, metrics=metrics) if release.encryption else FLModel(metrics=metrics))
                continue
            if release.privacy:
                check_budget_left(release.privacy, spent, trained)
            result = code.round(params, trained)
            metrics = {**result.eval_metrics, **result.train_metrics, "num_samples": result.num_samples}
            if release.privacy:
                spent = check_private(release.privacy, release.rounds, result, spent, code.released_rows, trained)
                metrics[EPSILON] = spent.epsilon
            check_num_samples(result.num_samples, code.released_rows, trained)
            report(metrics, trained)
            trained += 1
            flare.send(FLModel(params=result.weights, metrics=result.eval_metrics,
                               meta={"NUM_STEPS_CURRENT_ROUND": result.num_samples}))
    finally:
        code.close()


def check_num_samples(num_samples: int, released_rows: int, round: int) -> None:
    """Before round `round`'s update leaves: raise Failed (bad_num_samples) when train claims more
    examples than the rows the site released to the code (`released_rows`; 0: it read none, no bound).
    num_samples weighs the update in FedAvg and scales NVFLARE's percentile and SVT filters (their
    `gamma` bounds the change per example), so the code may not inflate it."""
    if released_rows and num_samples > released_rows:
        raise Failed({"entry": "train", "round": round, "category": "bad_num_samples"},
                     {"message": f"train returned num_samples {num_samples}, more than the {released_rows} rows released "
                                 "to it here; the update was not sent"})


def check_budget_left(privacy: dict, spent, round: int) -> None:
    """Before training round `round`: raise Failed (budget_spent) when the privacy `spent` so far
    (`dp_sgd.Spent`) already reaches the budget of `privacy` (the release's job.privacy)."""
    if spent.epsilon >= privacy["epsilon"]:
        raise Failed({"entry": "runtime", "round": round, "category": "budget_spent"},
                     {"message": f"the privacy budget is spent before round {round}: epsilon {spent.epsilon} of "
                                 f"{privacy['epsilon']} (delta {privacy['delta']}) after {spent.steps} DP-SGD steps"})


def check_private(privacy: dict, rounds: int, result: RoundResult, before, released_rows: int, round: int):
    """After training round `round`, before anything leaves: the privacy the run has now spent here
    (`dp_sgd.Spent`), as the site accounts the history the code's process reports (`dp_sgd.account`,
    against the release's `privacy` over its `rounds`, what was accounted `before` and the
    `released_rows`). Raises Failed when the update may not be sent: "not_private" when the round
    went through no DP-SGD step of ctx.make_private or through one the site does not accept,
    "budget_spent" when the run's epsilon now exceeds the budget. The numbers go into the site's
    record; the report holds only the category."""
    from .dp_sgd import account, calibrated_steps

    numbers = {"budget": privacy["epsilon"], "delta": privacy["delta"], "dp_steps_before": before.steps,
               "num_samples": result.num_samples, "released_rows": released_rows}
    try:
        spent = account(privacy, rounds, before, result.dp_history, released_rows)
    except ContractError as e:
        raise Failed({"entry": "train", "round": round, "category": "not_private"},
                     {"message": f"{e}; the update was not sent", **numbers}) from None
    if spent.epsilon > privacy["epsilon"]:
        calibrated = calibrated_steps(privacy, rounds, spent)
        raise Failed({"entry": "runtime", "round": round, "category": "budget_spent"},
                     {"message": f"epsilon {spent.epsilon} after round {round} exceeds the budget {privacy['epsilon']}: "
                                 f"{spent.steps} DP-SGD steps where the noise is calibrated for {calibrated} over the run "
                                 f"({rounds} rounds x local_epochs {privacy['local_epochs']} passes); the update was not sent",
                      **numbers, "epsilon": spent.epsilon, "dp_steps": spent.steps, "calibrated_steps": calibrated})
    return spent


def in_clear(params: dict, reference: dict) -> dict:
    """The global model `params` as NVFLARE's HEModelDecryptor hands it on ({entry: flat list of the
    decrypted values}), each entry in the shape and dtype of the initial global model `reference`
    {entry: array}: CKKS values are approximate, so integer entries are rounded and booleans cut at 1/2.
    Arrays pass as they are (the first round is in clear). Raises ContractError when they do not fit."""
    import numpy as np

    if not isinstance(params, dict) or params.keys() != reference.keys():
        raise ContractError("the global model does not fit the initial one", failure="site_error", entry="runtime")
    out = {}
    for name, like in reference.items():
        values = np.asarray(params[name])
        if values.size != like.size:
            raise ContractError(f"entry {name} of the global model does not fit the initial one",
                                failure="site_error", entry="runtime")
        if like.dtype == bool:
            values = values >= 0.5
        elif not np.issubdtype(like.dtype, np.floating) and np.issubdtype(values.dtype, np.floating):
            values = np.rint(values)
        out[name] = values.reshape(like.shape).astype(like.dtype)
    return out


def _code_of(app_dir: Path, release: Release) -> LocalCode | Sandbox:
    """Where the bundle's code runs at this site, as the guard decided (`Release.sandbox`)."""
    if release.sandbox == "off":
        ctx = Context(release.site, release.params, release.datasets, rounds=release.rounds, privacy=release.privacy)
        return LocalCode(app_dir / "custom", release.files[MODULE], ctx)
    return Sandbox(app_dir, release)


def stop(app_dir: Path, failed: Failed) -> NoReturn:
    """Keep `failed`'s whole story in the site's app folder (FAILURE_FILE) and log, send the server
    only its report, and raise SiteStopped, which `run_site` ends on: the exception itself never
    reaches NVFLARE, which would pass its text and traceback on."""
    import json
    import logging

    import nvflare.client as flare
    from nvflare.apis.analytix import AnalyticsDataType

    from ..contracts.fsutil import write_json

    record = app_dir / FAILURE_FILE
    try:
        write_json(record, {**failed.record, "report": failed.report})  # a record's own "report" never wins
    except OSError:
        record = "(not written)"
    logging.getLogger("caia.site").error("the run failed here (%s); the full record: %s", failed.report, record)
    try:
        flare.log(key=FAILURE_TAG, value=json.dumps(failed.report), data_type=AnalyticsDataType.TEXT)
    except Exception:  # NVFLARE's Client API is not up: the report cannot leave, the record stays
        logging.getLogger("caia.site").error("the failure report could not be sent")
    raise SiteStopped() from None


@contextmanager
def failure_record(app_dir: Path, entry: EntryPoints | None, round: int | None):
    """When the run fails at a site, inside or in a step raising Failed: `stop` with its story."""
    try:
        with failing(entry, round):
            yield
    except Failed as failed:
        stop(app_dir, failed)

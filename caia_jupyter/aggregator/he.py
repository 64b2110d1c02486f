"""The server of a caia job whose bundle asks for encrypted aggregation (`job.encryption` "he-ckks").

Each site encrypts its update with its TenSEAL CKKS context, weighted by its `num_samples`
(NVFLARE's HEModelEncryptor, in the bundle's client config); `CaiaHEFedAvg` hands the ciphertexts
to NVFLARE's HEInTimeAccumulateWeightedAggregator, which adds them and multiplies the sum by
1 / (total num_samples), all in the encrypted domain: the server's context has no secret key, so it
never holds a site's update, nor any intermediate global model, in clear; a round with a single
usable update keeps the global model as it was (that "sum" would be the site's own weights). Every round, sites
decrypt the global model they receive (HEModelDecryptor). Otherwise it is `CaiaFedAvg`: rounds,
status.json with "left" and "excluded", the final evaluation.

What the server can and cannot check: an update must hold one CKKS vector per entry of the global
model, of the entry's size, and a `num_samples` in range (else "malformed_update"); whether its values
are finite it cannot see. Every update it held is written down as it held it (`LEDGER`: the type of
each entry, the ciphertext's size in bytes), and each encrypted global model is kept as ciphertext
(`ENCRYPTED_MODEL`). The global model the researcher receives (global_model.npz) is the final one as
the first site (in name order) that evaluated it decrypted and returned it with its metrics: the
final aggregate, which the researcher receives in any case, passes the server in clear; no site's
own update ever does.
"""

from __future__ import annotations

import json

import numpy as np

from nvflare.apis.dxo import MetaKey, from_shareable
from nvflare.apis.fl_constant import FLMetaKey, ReservedKey
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.utils.fl_model_utils import FLModelUtils
from nvflare.app_opt.he.homomorphic_encrypt import serialize_nested_dict

from ..contracts import weights
from ..contracts.fsutil import write_atomic, write_json
from .components import GLOBAL_MODEL, CaiaFedAvg, log, save_arrays, unusable

LEDGER = "he_updates.jsonl"  # one line per update the server held: site, round, what each entry was
ENCRYPTED_MODEL = "global_model_encrypted.npz"  # entry -> the serialized CKKS vector, as uint8
DECRYPTED_BY = "he.json"  # which site's decryption of the final global model the researcher receives
CKKS = "CKKS"  # NVFLARE's name of the algorithm (nvflare.app_opt.he.constant)
AGREEMENT = 1e-3  # two sites' decryptions of one global model differ by CKKS noise only


class CaiaHEFedAvg(CaiaFedAvg):
    """`CaiaFedAvg` over encrypted updates, aggregated by the NVFLARE component `aggregator_id`
    (an HEInTimeAccumulateWeightedAggregator with expected_data_kind WEIGHTS, weigh_by_local_iter
    False: the sites weigh before they encrypt)."""

    def __init__(self, num_rounds: int, min_clients: int, round_timeout: int = 0, output_dir: str = "",
                 aggregator_id: str = "aggregator"):
        super().__init__(num_rounds, min_clients, round_timeout, output_dir)
        self.aggregator_id = aggregator_id
        self._meta: dict = {}  # the encrypted global model's PROCESSED_KEYS and PROCESSED_ALGORITHM

    def _average(self, results: list[FLModel], round: int, params: dict) -> dict:
        aggregator = self.engine.get_component(self.aggregator_id)
        self._set_ctx_prop_preserving_attrs(self.fl_ctx, AppConstants.CURRENT_ROUND, round)
        accepted = []  # the sites whose update is in the sum
        for result in results:
            site = result.meta.get("client_name", "?")
            reason = unusable_ciphertext(result, self._initial)
            if not reason:
                shareable = FLModelUtils.to_shareable(result)
                shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
                shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round)
                reason = None if aggregator.accept(shareable, self.fl_ctx) else "malformed_update"
            self._record(site, round, result.params, reason)
            if reason:
                self._excluded.append({"site": site, "round": round, "reason": reason})
                log.warning("caia left %s's encrypted update of round %d out of the sum: %s", site, round, reason)
            else:
                accepted.append(site)
        if not accepted:
            return params
        dxo = from_shareable(aggregator.aggregate(self.fl_ctx))  # which also empties the aggregator for the next round
        if len(accepted) == 1:  # the "sum" is one site's update, which every site decrypts: the global model stays
            self._excluded.append({"site": accepted[0], "round": round, "reason": "alone_encrypted"})
            log.warning("caia left %s's encrypted update of round %d out: it was the only one", accepted[0], round)
            return params
        self._meta = {MetaKey.PROCESSED_KEYS: dxo.get_meta_prop(MetaKey.PROCESSED_KEYS),
                      MetaKey.PROCESSED_ALGORITHM: dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM)}
        return dxo.data

    def _global_model(self, params: dict, round: int) -> FLModel:
        if _clear(params):
            return FLModel(params=params, current_round=round, total_rounds=self.num_rounds)
        # as NVFLARE's HEModelShareableGenerator sends it: serialized (a task's data is deep-copied for
        # each site, which a CKKS vector under a public context refuses), with the meta HEModelDecryptor reads
        serialized = serialize_nested_dict(dict(params))
        return FLModel(params=serialized, current_round=round, total_rounds=self.num_rounds, meta=dict(self._meta))

    def _save(self, params: dict) -> None:
        if _clear(params):  # no update was accepted yet: still the initial model
            return save_arrays(params, self._output(GLOBAL_MODEL))
        save_arrays({name: np.frombuffer(vector.serialize(), np.uint8) for name, vector in params.items()},
                    self._output(ENCRYPTED_MODEL))

    def _evaluated(self, results: list[FLModel]) -> None:
        """Keep, as global_model.npz, the final global model as the first site (by name) decrypted it,
        and in DECRYPTED_BY that site and the sites whose copies agree with it (within AGREEMENT)."""
        copies = {str(r.meta.get("client_name")): r.params for r in results
                  if unusable(r.params, 1, self._initial, self._dtypes) is None}  # in clear, as sites hand it to code
        if not copies:
            log.warning("caia: no site returned the final global model decrypted; global_model.npz is not the final model")
            return
        site = min(copies)
        save_arrays(copies[site], self._output(GLOBAL_MODEL))
        agree = sorted(name for name, copy in copies.items()
                       if all(np.allclose(copy[k], copies[site][k], rtol=0, atol=AGREEMENT) for k in copy))
        write_json(self._output(DECRYPTED_BY), {"global_model_decrypted_by": site, "copies_agreeing": agree})

    def _record(self, site: str, round: int, params, reason: str | None) -> None:
        entries = {name: type(value).__module__ + "." + type(value).__qualname__
                   for name, value in (params.items() if isinstance(params, dict) else ())}
        sizes = [len(value.serialize()) for value in (params.values() if isinstance(params, dict) else ())
                 if hasattr(value, "serialize")]
        line = {"site": site, "round": round, "entries": entries, "ciphertext_bytes": sum(sizes), "excluded": reason}
        path = self._output(LEDGER)
        previous = path.read_bytes() if path.is_file() else b""
        write_atomic(path, previous + (json.dumps(line) + "\n").encode())


def unusable_ciphertext(result: FLModel, reference: dict) -> str | None:
    """Why a site's encrypted update `result` cannot enter the sum with global model `reference`
    {entry: array in clear}: "no_examples", "malformed_update", or None when it can. It fits when it
    is CKKS, holds one CKKS vector per entry of `reference` of that entry's size, and its
    `num_samples` is an int in 1..MAX_NUM_SAMPLES."""
    import tenseal as ts

    weight, params = result.meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND), result.params
    if type(weight) is int and weight == 0:
        return "no_examples"
    if type(weight) is not int or not 0 < weight <= weights.MAX_NUM_SAMPLES or not isinstance(params, dict) \
            or params.keys() != reference.keys() or result.meta.get(MetaKey.PROCESSED_ALGORITHM) != CKKS:
        return "malformed_update"
    for name, vector in params.items():
        if not isinstance(vector, ts.CKKSVector) or vector.size() != reference[name].size:
            return "malformed_update"
    return None


def _clear(params: dict) -> bool:
    return all(isinstance(value, np.ndarray) for value in params.values())


"""The bundled client configs (contracts/client_configs.json) are exactly what NVFLARE's FedJob
API writes for each manifest `job.updates` x `job.encryption`."""

import pytest

from caia_jupyter.contracts.client_app import HE_CKKS, UPDATES, client_config, export_client_config
from caia_jupyter.contracts.errors import ContractError

REWRITE = 'python -c "from caia_jupyter.contracts.client_app import write_client_configs; write_client_configs()"'


@pytest.mark.parametrize("encryption", [None, HE_CKKS])
@pytest.mark.parametrize("updates", UPDATES)
def test_each_kept_config_is_what_fedjob_writes(updates, encryption):
    assert client_config(updates, encryption) == export_client_config(updates, encryption), f"write them again: {REWRITE}"


def test_an_unknown_choice_is_refused_as_before():
    with pytest.raises(ContractError, match="encryption 'rot13' is not one caia knows"):
        client_config(encryption="rot13")
    with pytest.raises(ValueError, match="updates 'all' is not one of"):
        client_config(updates="all")


def test_the_statistics_config_is_what_fedjob_writes():
    import json

    from caia_jupyter.contracts.client_app import statistics_config
    from caia_jupyter.site.statistics import export_statistics_config

    rewrite = 'python -c "from caia_jupyter.site.statistics import write_statistics_config; write_statistics_config()"'
    assert json.loads(statistics_config()) == export_statistics_config(), f"write it again: {rewrite}"

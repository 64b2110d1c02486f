"""What a researcher could learn from a site's statistics by asking an odd request, or by running an
approved request again and again with the server (the researcher's) choosing histogram edges."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from caia_jupyter.contracts.manifest import StatisticsSpec


def test_a_request_naming_a_column_or_quantile_twice_is_refused():
    # a site would fail on it (two columns of one name), after admission, instead of the request saying so
    with pytest.raises(ValidationError, match="column 'age' is named twice in columns="):
        StatisticsSpec(columns=["age", "size", "age"], statistics=["count"])
    with pytest.raises(ValidationError, match="quantile 0.5 is named twice"):
        StatisticsSpec(columns=["age"], statistics=["count", "quantile"], quantiles=[0.5, 0.25, 0.5])

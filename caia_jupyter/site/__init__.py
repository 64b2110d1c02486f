"""What runs at a site, beside its patient data: the code a center installs and audits.

The guard (which deployed code a site admits), the release it writes, the runtime that calls the
approved code's entry points, `ctx`, the site directory (catalog, trusted keys, policy) and the
verification of approvals and revocations. It builds on `caia_jupyter.contracts` alone: nothing of
the researcher's or reviewer's tools, the surfaces or the Jupyter stack (pyproject.toml's
import-linter contracts say so, and `make test` checks them).
"""

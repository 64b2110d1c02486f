"""What runs at a site, beside its patient data: the code a center installs and audits.

The guard (which deployed code a site admits), the release it writes, the runtime that calls the
approved code's entry points, `ctx`, the site directory (catalog, trusted keys, policy), the
verification of approvals and revocations, and the sandbox: approved code runs in a process of its
own, started by caia's fixed command, that restricts itself with Linux Landlock and seccomp before
it reads the bundle (`sandbox` its run folder and process, `confined` that process, `wire` what
passes between them, `landlock` the kernel calls; `sites.SANDBOX_POLICIES` the site's policy). It builds on `caia_jupyter.contracts` alone: nothing of
the researcher's or reviewer's tools, the surfaces or the Jupyter stack (pyproject.toml's
import-linter contracts say so, and `make test` checks them).
"""

"""The researcher's tools, on the researcher's machine: the notebook's federated cells, bundle
building and checking, transport, local validation, and reading runs.
"""

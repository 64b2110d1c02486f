"""What every side agrees on: errors, a bundle's file set, its manifest and id, the NVFLARE client
config a bundle carries, source checks, dataset schemas, the failure vocabulary, safe writes.

It imports no other part of caia: the site, the aggregator and the off-site tools all build on it.
"""

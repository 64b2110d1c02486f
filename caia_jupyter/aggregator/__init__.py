"""What runs at the aggregator (NVFLARE's server): FedAvg over numpy arrays and the metrics receiver.

No researcher code runs here; it builds on `caia_jupyter.contracts` alone.
"""

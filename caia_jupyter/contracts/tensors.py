"""A torch `state_dict` to the arrays it travels as, and back (the rule: `contracts.weights`).

Used where torch is: at a site (weights out after training, the global model in), by `caia submit`
(the initial weights and their dtype map) and on the researcher's side (`global_model.pt`).
"""

from __future__ import annotations

import numpy as np

from .errors import ContractError
from .weights import SUPPORTED


def dtypes_of(state_dict, entry: str = "build_model") -> dict[str, str]:
    """{name: torch dtype name} of a state_dict, in its order. Raises ContractError (category
    "unsupported_state", for `entry`) naming the first entry that is not a tensor of a SUPPORTED dtype."""
    import torch

    found = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            kind = f"a {type(value).__name__}, not a tensor"
        elif value.is_quantized or value.layout != torch.strided or value.is_meta:
            kind = "a quantized, sparse or meta tensor"
        elif str(value.dtype).removeprefix("torch.") not in SUPPORTED:
            kind = f"a {str(value.dtype).removeprefix('torch.')} tensor"
        else:
            found[name] = str(value.dtype).removeprefix("torch.")
            continue
        raise ContractError(
            f"the model's state_dict() entry {name!r} is {kind}; caia averages tensors of {', '.join(SUPPORTED)} only: "
            "keep anything else out of state_dict() (e.g. as a plain attribute)", failure="unsupported_state", entry=entry)
    return found


def to_arrays(state_dict, entry: str = "train") -> dict[str, np.ndarray]:
    """{name: numpy array in its carrier dtype}, copies; raises ContractError as `dtypes_of`."""
    import torch

    arrays = {}
    for name, dtype in dtypes_of(state_dict, entry).items():
        tensor = state_dict[name].detach().cpu()
        arrays[name] = (tensor.to(torch.float32) if dtype == "bfloat16" else tensor).numpy().copy()
    return arrays


def to_tensors(arrays: dict, dtypes: dict[str, str]) -> dict:
    """{name: torch tensor in dtypes[name]} from arrays in their carrier dtypes (entries missing
    from `dtypes` keep their array's dtype)."""
    import torch

    state = {}
    for name, array in arrays.items():
        tensor = torch.tensor(np.asarray(array))
        state[name] = tensor.to(getattr(torch, dtypes[name])) if name in dtypes else tensor
    return state

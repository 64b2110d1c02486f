"""Messages between a site's runtime and its sandboxed process: a JSON header and numeric arrays.

One message is one frame of a `multiprocessing.connection.Connection` (length-prefixed bytes):

    4 bytes    n, the header's length (big-endian)
    n bytes    the header: a JSON object; "arrays": [[name, numpy dtype str, shape], ...] when it carries any
    the rest   the arrays' raw bytes (C order), one after the other, exactly as many as the list says

No pickle crosses: what the sandboxed process sends is untrusted, so `receive` accepts only a JSON
object and arrays of bool, integer and floating dtypes, and raises WireError for anything else.
"""

from __future__ import annotations

import json
import math

MAX_HEADER = 4 * 2**20  # bytes; a header holds metrics, a failure record or a list of array names
MAX_DIMS = 32  # numpy's own limit is 64
_KINDS = "biuf"  # numpy dtype kinds an array may have: bool, signed and unsigned integers, floats


class WireError(Exception):
    """A message that is not a header and arrays as this module writes them."""


def send(conn, header: dict, arrays: dict | None = None) -> None:
    """Send `header` (JSON-able; NaN and infinities allowed) and `arrays` ({name: numpy array}) as one frame."""
    import numpy as np

    # asarray, not ascontiguousarray: that one makes a 0-d array (a BatchNorm's num_batches_tracked) 1-d
    arrays = {name: np.asarray(array, order="C") for name, array in (arrays or {}).items()}
    if arrays:
        header = {**header, "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}
    head = json.dumps(header).encode()
    conn.send_bytes(b"".join([len(head).to_bytes(4, "big"), head, *(a.tobytes() for a in arrays.values())]))


def receive(conn, limit: int | None = None) -> tuple[dict, dict]:
    """The next message: (header, {name: read-only numpy array}), of at most `limit` bytes (None:
    any). Raises EOFError when the other end has closed, OSError for a message beyond `limit`
    (refused before it is read: the length it claims may be anything), WireError for a malformed one."""
    frame = memoryview(conn.recv_bytes(limit))
    size = int.from_bytes(frame[:4], "big")
    if len(frame) < 4 or size > min(MAX_HEADER, len(frame) - 4):
        raise WireError("the header's length does not fit the message")
    try:
        header = json.loads(bytes(frame[4:4 + size]))
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise WireError(f"the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise WireError("the header is not a JSON object")
    arrays, offset = {}, 4 + size
    for item in header.pop("arrays", []) if isinstance(header.get("arrays", []), list) else [None]:
        import numpy as np  # only for arrays: the sandboxed process's first message must not load numpy

        name, dtype, shape = _array_spec(item)
        length = dtype.itemsize * math.prod(shape)
        if name in arrays or offset + length > len(frame):
            raise WireError(f"array {name!r} is repeated or longer than the message")
        try:
            arrays[name] = np.frombuffer(frame[offset:offset + length], dtype=dtype).reshape(shape)
        except ValueError as e:  # an empty array's shape is bounded by no length: numpy may refuse it
            raise WireError(f"array {name!r} cannot have shape {shape}: {e}") from None
        offset += length
    if offset != len(frame):
        raise WireError("the message holds bytes its header does not list")
    return header, arrays


def _array_spec(item) -> tuple:
    import numpy as np

    try:
        name, dtype, shape = item
        dtype = np.dtype(dtype)
        if (isinstance(name, str) and dtype.kind in _KINDS and not dtype.fields and isinstance(shape, list)
                and len(shape) <= MAX_DIMS and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            return name, dtype, tuple(shape)
    except (TypeError, ValueError):
        pass
    raise WireError(f"{str(item)[:80]} is not [name, numeric dtype, shape]")

"""The data path's one refusal type (a module of its own so every data-path module can raise it)."""

from __future__ import annotations


class RequestRejected(Exception):
    """A well-formed request that cannot be served: answered with the op's in-band failure value
    (``wire.OP_SPECS[op].failure``), or the ``"error"`` reply where the op has none."""

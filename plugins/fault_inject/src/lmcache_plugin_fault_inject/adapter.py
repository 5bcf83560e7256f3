"""The ``fault_inject`` L2 adapter: any other adapter, with failures injected on purpose.

It wraps one inner adapter (any registered type, built from the ``inner`` JSON
object exactly as ``--l2-adapter`` would build it) and forwards each object
operation to the inner adapter's author surface (``_put``/``_get``/``_size``/
``_remove``/``_list``/``_recover``), injecting on the way, per operation
(``store``, ``lookup``, ``load``, ``delete``):

``fail_rate``
    the call raises :class:`InjectedFault` (an I/O error) without reaching the
    inner adapter: the base class counts it as that operation's failure;
``latency_ms``
    added before every call;
``hang_rate``
    the call blocks, as an unanswered network request does, until it is released
    (the ``release`` or ``clear`` operation, or closing the adapter) or
    ``hang_seconds`` pass, and then fails;
``truncate_rate`` (``load`` only)
    the object comes back short: the inner adapter reads it, the wrapper
    overwrites the tail half of the caller's buffer with a poison pattern
    (``0xA5``) and reports the load failed, as an adapter that detected a short
    read must. The server must never serve such a buffer.

Decisions are drawn per object from one ``random.Random(seed)`` (``seed`` null:
a random seed), in the order fail, hang, truncate. ``enabled: false`` turns
every fault off (the rates are kept).

Configured at start (``--l2-adapter``) and switchable at runtime through the
generic reconfigure route (``POST /reconfigure/fault_inject/<operation>``,
:class:`~lmcache_core.storage.l2.base.Reconfigurable`):

``set``
    ``{"faults": {"store": {...}, ...}, "enabled"?, "seed"?, "hang_seconds"?}``:
    each operation named in ``faults`` gets exactly the given fields (others 0);
    operations not named keep theirs. Bad values are 400 and change nothing.
``clear``
    every rate and latency to 0, hung calls released.
``release``
    hung calls released now (they fail); the rates stay.

``GET /reconfigure/fault_inject/status`` shows the faults in force, the counts
injected per operation and kind, and the calls hung now.

Accounting (usage per salt, lookup locks, listeners) is the wrapper's, from the
base class; the inner adapter's own pool and books are never used. Eviction
settings belong on the wrapper (``eviction``, ``max_capacity_gb``; a
``max_capacity_gb`` of 0 takes the inner adapter's).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from lmcache_core.api import L2Adapter, L2AdapterConfig, L2AdapterContext, ObjectKey, Reconfigurable

logger = logging.getLogger(__name__)

TYPE_NAME = "fault_inject"
OPERATIONS = ("store", "lookup", "load", "delete")
KINDS = ("fail", "latency", "hang", "truncate")
POISON = 0xA5
MAX_HANG_SECONDS = 3600.0


class InjectedFault(OSError):
    """The failure this adapter injected (an ``OSError``, as real I/O failures are)."""


def _rate(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


class OpFaults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The faults of one operation; every field defaults to 0 (no fault)."""

    fail_rate: float = 0.0
    latency_ms: float = 0.0
    hang_rate: float = 0.0
    truncate_rate: float = 0.0

    def __post_init__(self) -> None:
        _rate("fail_rate", self.fail_rate)
        _rate("hang_rate", self.hang_rate)
        _rate("truncate_rate", self.truncate_rate)
        if not (math.isfinite(self.latency_ms) and 0.0 <= self.latency_ms <= MAX_HANG_SECONDS * 1000):
            raise ValueError(f"latency_ms must be in [0, {MAX_HANG_SECONDS * 1000:.0f}], got {self.latency_ms!r}")
        if self.fail_rate + self.hang_rate + self.truncate_rate > 1.0:
            raise ValueError("fail_rate + hang_rate + truncate_rate must be <= 1")

    @property
    def active(self) -> bool:
        return bool(self.fail_rate or self.latency_ms or self.hang_rate or self.truncate_rate)


def _no_faults() -> OpFaults:
    return OpFaults()


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Faults per operation; ``truncate_rate`` only on ``load``."""

    store: OpFaults = msgspec.field(default_factory=_no_faults)
    lookup: OpFaults = msgspec.field(default_factory=_no_faults)
    load: OpFaults = msgspec.field(default_factory=_no_faults)
    delete: OpFaults = msgspec.field(default_factory=_no_faults)

    def __post_init__(self) -> None:
        for op in ("store", "lookup", "delete"):
            if getattr(self, op).truncate_rate:
                raise ValueError(f"truncate_rate applies to load only, not {op}")


def _no_fault_table() -> Faults:
    return Faults()


@functools.lru_cache(maxsize=1)
def _adapter_types() -> Any:
    """Every L2 adapter type the installed plugins register (built once per process)."""
    from lmcache_core.api import PluginHost

    host = PluginHost()
    registrations = getattr(host, "registrations", None)
    if registrations is not None:
        return registrations.l2_adapter_types
    return host.l2_adapter_types()


def parse_inner(inner: Mapping[str, Any]) -> tuple[str, Any]:
    """The inner adapter's ``(type_name, config Struct)``; ValueError when it is not a valid adapter config."""
    from lmcache_core.api import parse_l2_configs

    if not isinstance(inner, Mapping) or not isinstance(inner.get("type"), str) or not inner["type"]:
        raise ValueError('inner must be an adapter config object with a "type"')
    if inner["type"] == TYPE_NAME:
        raise ValueError("inner cannot itself be a fault_inject adapter")
    try:
        return parse_l2_configs([dict(inner)], _adapter_types())[0]
    except ValueError as exc:
        raise ValueError("inner: " + re.sub(r"^--l2-adapter #0:?\s*", "", str(exc))) from None


class FaultInjectConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    """``--l2-adapter '{"type": "fault_inject", "inner": {...}, "faults": {...}}'``.

    * ``inner`` (required): the wrapped adapter's config, with its own ``type``.
    * ``faults``: per operation (``store``, ``lookup``, ``load``, ``delete``)
      ``{fail_rate, latency_ms, hang_rate, truncate_rate}`` (load only for truncate).
    * ``seed``: the fault generator's seed (null: random).
    * ``hang_seconds``: the longest a hung call blocks before failing (default 30).
    * ``enabled``: false keeps the rates but injects nothing.
    """

    inner: dict[str, Any]
    faults: Faults = msgspec.field(default_factory=_no_fault_table)
    seed: int | None = None
    hang_seconds: float = 30.0
    enabled: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.hang_seconds) and 0.0 < self.hang_seconds <= MAX_HANG_SECONDS):
            raise ValueError(f"hang_seconds must be in (0, {MAX_HANG_SECONDS:.0f}]")
        parse_inner(self.inner)


class SetParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``set`` operation's body (all optional)."""

    faults: dict[str, OpFaults] = msgspec.field(default_factory=dict)
    enabled: bool | None = None
    seed: int | None = None
    hang_seconds: float | None = None


class FaultInjectL2Adapter(L2Adapter, Reconfigurable):
    """An L2 adapter that forwards to ``inner`` and injects the configured faults."""

    def __init__(self, config: FaultInjectConfig, context: L2AdapterContext, inner: L2Adapter) -> None:
        super().__init__(config, context)
        self.inner = inner
        if self.max_capacity_bytes <= 0:
            self.max_capacity_bytes = inner.max_capacity_bytes
        self._state = threading.Lock()
        self._faults = config.faults
        self._enabled = config.enabled
        self._hang_seconds = config.hang_seconds
        self._rng = random.Random(config.seed)
        self._release = threading.Event()
        self._closing = threading.Event()
        self._hung = 0
        self.injected: dict[str, dict[str, int]] = {op: dict.fromkeys(KINDS, 0) for op in OPERATIONS}

    # -- injection ---------------------------------------------------------------------

    def _draw(self, op: str) -> tuple[str | None, float, threading.Event]:
        """(fault kind or None, latency in s, the release event of this moment) for one call of ``op``."""
        with self._state:
            faults: OpFaults = getattr(self._faults, op)
            if not self._enabled or not faults.active:
                return None, 0.0, self._release
            r = self._rng.random()
            kind = None
            if r < faults.fail_rate:
                kind = "fail"
            elif r < faults.fail_rate + faults.hang_rate:
                kind = "hang"
            elif r < faults.fail_rate + faults.hang_rate + faults.truncate_rate:
                kind = "truncate"
            if faults.latency_ms:
                self.injected[op]["latency"] += 1
            if kind is not None:
                self.injected[op][kind] += 1
            return kind, faults.latency_ms / 1000.0, self._release

    def _inject(self, op: str) -> bool:
        """Apply latency, fail or hang for one call; True when the load must come back truncated."""
        kind, delay, release = self._draw(op)
        if delay:
            self._closing.wait(delay)  # the added latency itself; closing cuts it short
        if kind == "fail":
            raise InjectedFault(f"fault_inject: injected {op} failure")
        if kind == "hang":
            with self._state:
                self._hung += 1
                limit = self._hang_seconds
            try:
                released = release.wait(limit)
            finally:
                with self._state:
                    self._hung -= 1
            raise InjectedFault(f"fault_inject: {op} hung, then {'released' if released else 'timed out'}")
        return kind == "truncate"

    def release_hung(self) -> None:
        """Fail every call hung now (later hangs block again)."""
        with self._state:
            self._release.set()
            self._release = threading.Event()

    # -- the author's surface, forwarded ------------------------------------------------

    def _put(self, key: ObjectKey, data: memoryview) -> None:
        self._inject("store")
        self.inner._put(key, data)

    def _get(self, key: ObjectKey, out: memoryview) -> bool:
        truncate = self._inject("load")
        ok = self.inner._get(key, out)
        if ok and truncate:
            half = out.nbytes // 2
            out[half:] = bytes([POISON]) * (out.nbytes - half)
            return False
        return ok

    def _size(self, key: ObjectKey) -> int | None:
        self._inject("lookup")
        return self.inner._size(key)

    def _remove(self, key: ObjectKey) -> int | None:
        self._inject("delete")
        return self.inner._remove(key)

    def _list(self, model_name: str | None, cursor: str | None,
              limit: int) -> tuple[list[tuple[ObjectKey, int]], str | None]:
        return self.inner._list(model_name, cursor, limit)

    def _recover(self) -> Iterable[tuple[ObjectKey, int]]:
        return self.inner._recover()

    def _status(self) -> dict[str, Any]:
        return {"inner_type": self.inner.type_name, "inner": self.inner._status(), "fault_inject": self._fault_state()}

    def close(self) -> None:
        self._closing.set()
        self.release_hung()
        try:
            super().close()
        finally:
            self.inner.close()

    # -- Reconfigurable ------------------------------------------------------------------

    def _fault_state(self) -> dict[str, Any]:
        with self._state:
            return {
                "enabled": self._enabled,
                "hang_seconds": self._hang_seconds,
                "faults": msgspec.to_builtins(self._faults),
                "injected": {op: dict(kinds) for op, kinds in self.injected.items()},
                "hung_now": self._hung,
            }

    def reconfigure_operations(self) -> list[str]:
        return ["clear", "release", "set"]

    def reconfigure(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if operation == "release":
            self.release_hung()
        elif operation == "clear":
            with self._state:
                self._faults = Faults()
            self.release_hung()
        elif operation == "set":
            self._set(params)
        else:
            raise ValueError(f"unsupported fault_inject reconfigure operation: {operation}")
        return self._fault_state()

    def _set(self, params: Mapping[str, Any]) -> None:
        try:
            parsed = msgspec.convert(dict(params), SetParams)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid fault_inject settings: {exc}") from None
        unknown = set(parsed.faults) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operation(s) {sorted(unknown)}; known: {', '.join(OPERATIONS)}")
        if parsed.hang_seconds is not None and not (
                math.isfinite(parsed.hang_seconds) and 0.0 < parsed.hang_seconds <= MAX_HANG_SECONDS):
            raise ValueError(f"hang_seconds must be in (0, {MAX_HANG_SECONDS:.0f}]")
        with self._state:
            table = {op: getattr(self._faults, op) for op in OPERATIONS}
            table.update(parsed.faults)
            try:
                faults = Faults(**table)
            except ValueError as exc:
                raise ValueError(str(exc)) from None
            self._faults = faults
            if parsed.enabled is not None:
                self._enabled = parsed.enabled
            if parsed.seed is not None:
                self._rng = random.Random(parsed.seed)
            if parsed.hang_seconds is not None:
                self._hang_seconds = parsed.hang_seconds
        if parsed.enabled is False:
            self.release_hung()

    def reconfigure_status(self) -> dict[str, Any]:
        return self._fault_state()


def make_adapter(config: FaultInjectConfig, context: L2AdapterContext) -> FaultInjectL2Adapter:
    """The factory registered for type ``fault_inject``: builds the inner adapter, then the wrapper."""
    inner_type, inner_config = parse_inner(config.inner)
    inner = _adapter_types().get(inner_type).factory(
        inner_config, L2AdapterContext(context.index, inner_type, context.io_workers))
    try:
        return FaultInjectL2Adapter(config, context, inner)
    except BaseException:
        inner.close()
        raise


__all__ = ["FaultInjectConfig", "FaultInjectL2Adapter", "Faults", "InjectedFault", "OpFaults", "POISON",
           "TYPE_NAME", "make_adapter", "parse_inner"]

"""The L2 adapter contract, as a test kit: run :func:`check_l2_adapter` on your own adapter.

The core relies on every L2 adapter behaving as ``docs/l2-adapters.md`` says. This
module checks it against a real instance of your adapter (no mocks): give it a
callable that builds a *started* adapter over your backend, and it runs every
check, raising :class:`ContractViolation` (an ``AssertionError``, so pytest shows it
as a failure) naming the check and what was wrong::

    from lmcache_core.l2_contract import check_l2_adapter

    def test_my_adapter_keeps_the_contract(tmp_path):
        def make():
            adapter = MyAdapter(MyConfig(root=str(tmp_path)), L2AdapterContext(0, "mine"))
            adapter.start()
            return adapter
        report = check_l2_adapter(make, persistent=True)
        assert report["listing"] == "passed"

``make`` is called more than once when ``persistent`` is true (a restart over the same
storage must see what the first instance stored); each instance is closed by the kit.
The kit stores objects of ``object_nbytes`` bytes under keys of two models and two
salts that no other test uses (model names start with ``contract-``), and deletes
what it stored before it returns, so it can run against a shared backend.

It needs no pytest: the same checks run from a script or a plugin's own CI.

Checks (the keys of the returned report; each is ``"passed"``, or ``"not supported"``
for listing on an adapter that raises :class:`ListingNotSupported`):

``round_trip``
    store, lookup-and-lock, load into caller buffers (bytes equal), unlock.
``absent``
    lookup, load and delete of keys never stored: False, False, "gone" (True).
``wrong_size_buffer``
    a load into a buffer one byte short or long answers False, never raises.
``locks``
    a locked key survives delete; two locks need two unlocks; then delete removes it.
``overwrite``
    storing a key again succeeds and is accounted once.
``usage``
    ``usage()`` per ``cache_salt`` grows by exactly what was stored and shrinks on delete.
``concurrency``
    threads storing, looking up, loading and deleting different keys at once: every
    byte loaded is the byte stored, no call raises.
``listing``
    paging with a small page size while another thread keeps storing: every key stored
    before the listing began appears exactly once, none appears twice, sizes match,
    the model filter holds; a malformed page token is a ``ValueError``.
``persistence``
    (``persistent=True``) a new instance over the same storage finds the keys, loads
    equal bytes and accounts their usage.
``close``
    ``close()`` twice is harmless.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l2.base import L2Adapter, ListingNotSupported

__all__ = ["ContractViolation", "check_l2_adapter", "contract_key", "contract_payload"]

_serial = itertools.count()


class ContractViolation(AssertionError):
    """An adapter broke the L2 contract; the message names the check."""


def contract_key(i: int, *, model: str = "contract-model-a", salt: str = "", rank: int = 0) -> ObjectKey:
    """A key the kit uses: a 32-byte chunk hash derived from ``i`` (and a per-run serial)."""
    return ObjectKey(hashlib.sha256(f"lmcache-contract-{i}".encode()).digest(), model, rank, 0, salt)


def contract_payload(key: ObjectKey, nbytes: int) -> bytes:
    """The bytes stored under ``key``: derived from the key, so every load can be checked."""
    seed = hashlib.sha256(key.chunk_hash + key.model_name.encode() + key.cache_salt.encode()).digest()
    return (seed * (nbytes // len(seed) + 1))[:nbytes]


class _Check:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, ok: bool, what: str) -> None:
        if not ok:
            raise ContractViolation(f"L2 contract, check {self.name!r}: {what}")


def _wait(future: Any, timeout: float) -> Any:
    return future.result(timeout=timeout)


def check_l2_adapter(make: Callable[[], L2Adapter], *, object_nbytes: int = 8192, persistent: bool = False,
                     concurrency: int = 8, timeout: float = 60.0,
                     accounted_nbytes: int | None = None) -> dict[str, str]:
    """Run every contract check on adapters built by ``make()``; the report, or :class:`ContractViolation`.

    ``accounted_nbytes``: what one stored object counts in ``usage()`` when the adapter
    accounts in its own allocation unit (a DAX slot); by default ``object_nbytes``.
    """
    unit = object_nbytes if accounted_nbytes is None else accounted_nbytes
    run = next(_serial)
    base = 1_000_000 * (run + 1)

    def key(i: int, model: str = "contract-model-a", salt: str = "") -> ObjectKey:
        return contract_key(base + i, model=model, salt=salt)

    def store(adapter: L2Adapter, keys: list[ObjectKey]) -> list[bool]:
        return _wait(adapter.store(keys, [bytearray(contract_payload(k, object_nbytes)) for k in keys]), timeout)

    def load_equal(adapter: L2Adapter, keys: list[ObjectKey]) -> list[bool]:
        bufs = [bytearray(object_nbytes) for _ in keys]
        ok = _wait(adapter.load(keys, bufs), timeout)
        return [o and bytes(b) == contract_payload(k, object_nbytes) for k, o, b in zip(keys, ok, bufs)]

    report: dict[str, str] = {}
    adapter = make()
    stored: set[ObjectKey] = set()
    try:
        c = _Check("round_trip")
        keys = [key(i, model, salt) for i, (model, salt) in
                enumerate(itertools.product(["contract-model-a", "contract-model-b"], ["", "tenant-x"]))]
        c(store(adapter, keys) == [True] * len(keys), "store did not report success for every key")
        stored.update(keys)
        c(_wait(adapter.lookup_and_lock(keys), timeout) == [True] * len(keys), "a stored key was not found")
        c(load_equal(adapter, keys) == [True] * len(keys), "a load failed or returned other bytes")
        adapter.unlock(keys)
        report[c.name] = "passed"

        c = _Check("absent")
        never = [key(900 + i) for i in range(3)]
        c(_wait(adapter.lookup_and_lock(never), timeout) == [False] * 3, "a key never stored was found")
        c(_wait(adapter.load(never, [bytearray(object_nbytes) for _ in never]), timeout) == [False] * 3,
          "a load of a key never stored succeeded")
        c(_wait(adapter.delete(never), timeout) == [True] * 3, "deleting an absent key must answer True (gone)")
        rep = _wait(adapter.delete_report(never), timeout)
        c(set(rep.absent) == set(never) and not rep.deleted and not rep.failed,
          f"delete_report of absent keys: {rep}")
        report[c.name] = "passed"

        c = _Check("wrong_size_buffer")
        k = keys[0]
        for n in (object_nbytes - 1, object_nbytes + 1):
            try:
                got = _wait(adapter.load([k], [bytearray(n)]), timeout)
            except Exception as exc:  # noqa: BLE001 - the contract says: never raise
                raise ContractViolation(f"L2 contract, check 'wrong_size_buffer': load raised {exc!r}") from exc
            c(got == [False], f"a load into a {n}-byte buffer of a {object_nbytes}-byte object answered {got}")
        report[c.name] = "passed"

        c = _Check("locks")
        k = key(10)
        c(store(adapter, [k]) == [True], "store failed")
        stored.add(k)
        c(_wait(adapter.lookup_and_lock([k]), timeout) == [True], "lookup missed")
        c(_wait(adapter.lookup_and_lock([k]), timeout) == [True], "second lookup missed")
        c(_wait(adapter.delete([k]), timeout) == [False], "a locked key was deleted")
        rep = _wait(adapter.delete_report([k]), timeout)
        c(rep.locked == [k], f"delete_report did not report the key locked: {rep}")
        adapter.unlock([k])
        c(_wait(adapter.delete([k]), timeout) == [False], "a key locked twice and unlocked once was deleted")
        c(not adapter.is_key_evictable(k), "a locked key is evictable")
        adapter.unlock([k])
        c(adapter.is_key_evictable(k), "an unlocked key is not evictable")
        c(load_equal(adapter, [k]) == [True], "the key survived delete but its bytes changed")
        c(_wait(adapter.delete([k]), timeout) == [True], "an unlocked key was not deleted")
        stored.discard(k)
        c(_wait(adapter.lookup_and_lock([k]), timeout) == [False], "a deleted key is still found")
        report[c.name] = "passed"

        c = _Check("overwrite")
        k = key(20, salt="tenant-x")
        before = adapter.usage().bytes_by_cache_salt.get("tenant-x", 0)
        c(store(adapter, [k]) == [True] and store(adapter, [k]) == [True], "storing a key twice failed")
        stored.add(k)
        after = adapter.usage().bytes_by_cache_salt.get("tenant-x", 0)
        c(after - before == unit, f"a key stored twice was accounted {after - before} bytes, not {unit}")
        report[c.name] = "passed"

        c = _Check("usage")
        salt = f"contract-salt-{run}"
        fresh = [key(30 + i, salt=salt) for i in range(4)]
        c(adapter.usage().bytes_by_cache_salt.get(salt, 0) == 0, "a salt never used has usage")
        total_before = adapter.usage().total_bytes_used
        c(store(adapter, fresh) == [True] * 4, "store failed")
        stored.update(fresh)
        usage = adapter.usage()
        c(usage.bytes_by_cache_salt.get(salt, 0) == 4 * unit,
          f"usage of the salt is {usage.bytes_by_cache_salt.get(salt, 0)}, not {4 * unit}")
        c(usage.total_bytes_used - total_before == 4 * unit, "total usage did not grow by what was stored")
        c(_wait(adapter.delete(fresh[:2]), timeout) == [True, True], "delete failed")
        stored.difference_update(fresh[:2])
        c(adapter.usage().bytes_by_cache_salt.get(salt, 0) == 2 * unit, "usage did not shrink on delete")
        report[c.name] = "passed"

        c = _Check("concurrency")
        errors: list[str] = []
        own = [[key(1000 + t * 100 + i) for i in range(6)] for t in range(concurrency)]

        def worker(t: int) -> None:
            try:
                mine = own[t]
                for _ in range(3):
                    if store(adapter, mine) != [True] * len(mine):
                        errors.append(f"thread {t}: store failed")
                    if _wait(adapter.lookup_and_lock(mine), timeout) != [True] * len(mine):
                        errors.append(f"thread {t}: lookup missed its own keys")
                    if load_equal(adapter, mine) != [True] * len(mine):
                        errors.append(f"thread {t}: wrong bytes")
                    adapter.unlock(mine)
                    if _wait(adapter.delete(mine[:2]), timeout) != [True, True]:
                        errors.append(f"thread {t}: delete failed")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"thread {t}: {exc!r}")

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(concurrency)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout * 3)
        c(not any(th.is_alive() for th in threads), "a thread did not finish")
        c(not errors, "; ".join(errors[:5]))
        for mine in own:
            stored.update(mine[2:])
        report[c.name] = "passed"

        c = _Check("listing")
        try:
            adapter.list_keys("contract-model-a", 1, None)
        except ListingNotSupported:
            report[c.name] = "not supported"
        else:
            listed = [key(2000 + i, model="contract-model-l") for i in range(11)]
            c(store(adapter, listed) == [True] * len(listed), "store failed")
            stored.update(listed)
            stop = threading.Event()
            extra: list[ObjectKey] = []

            def keep_storing() -> None:
                i = 0
                while not stop.is_set() and i < 200:
                    k2 = key(3000 + i, model="contract-model-l")
                    if store(adapter, [k2]) == [True]:
                        extra.append(k2)
                    i += 1

            feeder = threading.Thread(target=keep_storing)
            feeder.start()
            seen: list[Any] = []
            token: str | None = None
            try:
                for _ in range(1000):
                    page = adapter.list_keys("contract-model-l", 3, token)
                    c(len(page.entries) <= 3, f"a page of size 3 held {len(page.entries)} entries")
                    seen.extend(page.entries)
                    token = page.next_page_token
                    if token is None:
                        break
                c(token is None, "the listing did not end")
            finally:
                stop.set()
                feeder.join(timeout)
                stored.update(extra)
            as_keys = [_decoded(e.key) for e in seen]
            c(len(as_keys) == len(set(as_keys)), "a key was listed twice")
            c(all(k2.model_name == "contract-model-l" for k2 in as_keys), "the model filter let another model in")
            missing = [k2 for k2 in listed if k2 not in set(as_keys)]
            c(not missing, f"{len(missing)} key(s) stored before the listing began were not listed")
            sizes = {_decoded(e.key): e.size_bytes for e in seen}
            c(all(sizes[k2] == object_nbytes for k2 in listed), "a listed size differs from the stored size")
            try:
                adapter.list_keys("contract-model-l", 3, "\x00not-a-token\x00")
            except ValueError:
                pass
            else:
                raise ContractViolation("L2 contract, check 'listing': a malformed page token was accepted")
            report[c.name] = "passed"

        if persistent:
            c = _Check("persistence")
            survivors = list(stored)[:6]
            adapter.close()
            adapter = make()
            c(_wait(adapter.lookup_and_lock(survivors), timeout) == [True] * len(survivors),
              "a new instance does not find what the previous one stored")
            c(load_equal(adapter, survivors) == [True] * len(survivors), "a new instance loads other bytes")
            adapter.unlock(survivors)
            usage = adapter.usage()
            c(usage.total_bytes_used >= len(survivors) * unit,
              "a new instance does not account what is stored (recover)")
            report[c.name] = "passed"
    finally:
        try:
            if stored and not adapter._closed:
                _wait(adapter.delete(list(stored)), timeout)
        finally:
            adapter.close()
            adapter.close()
    report["close"] = "passed"
    return report


def _decoded(key: Any) -> ObjectKey:
    """The :class:`ObjectKey` of a listing entry's (encoded) key."""
    return key if isinstance(key, ObjectKey) else key.to_object_key()

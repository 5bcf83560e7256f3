"""The filesystem L2 adapter (type ``fs``): one file per object, readable by LMCache's ``fs`` adapter and back.

On-disk format (LMCache 0.5.6's ``fs`` adapter: file names and chunk bytes)
--------------------------------------------------------------------------------
* One regular file per object, named exactly :func:`lmcache_core.keys.fs_file_name`
  (``<model, "/" -> "-SEP-">@0x<kv_rank:08x>@<group:x>@<hash>[@<salt>].data``),
  directly in ``base_path`` (flat, no sub-directories).
* Contents: the raw object bytes, no header, no padding. With ``checksum: "crc32"``
  an 8-byte trailer follows: the 4 bytes ``b"LMC1"`` then ``zlib.crc32(payload)``
  as a little-endian uint32 -- LMCache's format, so either server verifies the
  other's files.

Writes and durability
---------------------
A store writes a temporary file in the temp directory (``base_path/<relative_tmp_dir>``,
or ``base_path`` itself when ``relative_tmp_dir`` is null, as LMCache's default) and
``os.replace``-s it onto the final name, so a reader -- in this process, another
process, or after a crash -- sees either no file or the whole object. A file that
already exists is taken as stored (keys are content-addressed) and not rewritten.

``fsync`` (default false, as LMCache) only matters for power loss or a kernel crash:
a killed *process* never leaves a partial object visible either way, because the
rename happens after the last write. With ``fsync: true`` the temp file is fsynced
before the rename and the directory after it, so a file that survives power loss
holds its full contents; without it, a power cut may leave a named file with
missing data, which ``checksum: "crc32"`` detects (served as a miss, then removed).

Temp files are named ``.lmcs-<host>.<pid>.<seq>.tmp``: unique per writer, so two
threads or processes storing one key never write into one file. At start the
adapter removes its own stale temp files: this host's whose process is gone, and
any (from any host on a shared file system) older than an hour. Other tools' files
are never touched.

Sizes
-----
The base class accounts an object at its payload size (``data.nbytes``), so
:meth:`FSL2Adapter._size`, :meth:`~FSL2Adapter._recover` and
:meth:`~FSL2Adapter._list` report payload sizes too: the file size, less the
8-byte trailer under ``crc32``. (LMCache counts the trailer; 8 bytes per object.)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import heapq
import itertools
import logging
import os
import re
import socket
import stat
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

from lmcache_core.api import (
    FS_NAME_SUFFIX,
    L2Adapter,
    L2AdapterConfig,
    L2AdapterContext,
    ObjectKey,
    UnencodableKeyError,
    fs_file_name,
    try_parse_fs_file_name,
)

logger = logging.getLogger(__name__)

TYPE_NAME = "fs"

CRC32_MAGIC = b"LMC1"
CRC32_TRAILER = struct.Struct("<4sI")  # magic, zlib.crc32(payload) little-endian
TRAILER_SIZE = CRC32_TRAILER.size  # 8
CHECKSUMS = ("none", "crc32")

STALE_TMP_SECONDS = 3600.0
"""A temp file this old is abandoned whoever wrote it (no object write takes an hour)."""

_SEP = "-SEP-"
_OPEN_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_OPEN_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_TMP_NAME = re.compile(r"\.lmcs-(?P<host>[A-Za-z0-9-]{1,63})\.(?P<pid>[0-9]{1,10})\.(?P<seq>[0-9]{1,20})\.tmp")
_CURSOR_PREFIX = "fs1."


class FSAdapterConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    """``--l2-adapter '{"type": "fs", ...}'``: LMCache's ``fs`` keys plus ours.

    * ``base_path`` (required): the object directory; created (with parents) if missing.
    * ``relative_tmp_dir``: temp-file directory under ``base_path`` (created, one level);
      null puts temp files beside the objects, as LMCache does by default.
    * ``checksum``: ``"none"`` or ``"crc32"`` (LMCache's 8-byte trailer, verified on load).
    * ``recover_on_start``: scan ``base_path`` at start to account what is already stored.
    * ``fsync``: fsync each object (and its directory entry) before reporting it stored.
    * ``io_workers``: threads for this adapter's I/O; 0 keeps the server's default.
    * ``read_ahead_size``, ``use_odirect``: LMCache keys, accepted so its configs load
      unchanged; buffered I/O with the kernel's read-ahead is used either way.
    """

    base_path: str
    relative_tmp_dir: str | None = ".tmp"
    checksum: str = "none"
    recover_on_start: bool = True
    fsync: bool = False
    io_workers: int = 0
    read_ahead_size: int | None = None
    use_odirect: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.base_path or "\x00" in self.base_path:
            raise ValueError("base_path must be a non-empty path")
        if self.checksum not in CHECKSUMS:
            raise ValueError(f"checksum must be one of {', '.join(map(repr, CHECKSUMS))}, got {self.checksum!r}")
        tmp = self.relative_tmp_dir
        if tmp is not None:
            parts = tmp.replace("\\", "/").split("/")
            if not tmp or "\x00" in tmp or os.path.isabs(tmp) or any(p in ("", ".", "..") for p in parts):
                raise ValueError(
                    f"relative_tmp_dir must be a relative path under base_path without '.', '..' or empty "
                    f"segments, got {tmp!r}"
                )
            if tmp.endswith(FS_NAME_SUFFIX):
                raise ValueError(f"relative_tmp_dir must not end in {FS_NAME_SUFFIX!r}, got {tmp!r}")
        if self.io_workers < 0:
            raise ValueError(f"io_workers must be >= 0 (0: the server's default), got {self.io_workers}")
        if self.read_ahead_size is not None and self.read_ahead_size <= 0:
            raise ValueError(f"read_ahead_size must be a positive integer, got {self.read_ahead_size}")


def crc32_trailer(payload: memoryview) -> bytes:
    """The 8-byte trailer LMCache appends under ``checksum: "crc32"``."""
    return CRC32_TRAILER.pack(CRC32_MAGIC, zlib.crc32(payload))


def encode_cursor(name: str) -> str:
    """An opaque page token for "after file name ``name``"."""
    raw = name.encode("utf-8", "surrogateescape")
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(token: str) -> str:
    """The file name inside a page token; ValueError for anything :func:`encode_cursor` did not make."""
    if not isinstance(token, str) or not token.startswith(_CURSOR_PREFIX):
        raise ValueError("malformed page token")
    body = token[len(_CURSOR_PREFIX):]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        name = raw.decode("utf-8", "surrogateescape")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("malformed page token") from None
    if try_parse_fs_file_name(name) is None:
        raise ValueError("malformed page token")
    return name


def _host_tag() -> str:
    tag = re.sub(r"[^A-Za-z0-9-]+", "-", socket.gethostname()).strip("-")[:63]
    return tag or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists but not ours (or not a pid at all: keep, the age rule still applies)
    return True


def _write_all(fd: int, view: memoryview) -> None:
    # One os.write per call moves up to ~2 GiB straight from the caller's buffer; loop for the rest.
    done, total = 0, view.nbytes
    while done < total:
        n = os.write(fd, view[done:])
        if n <= 0:
            raise OSError(errno.ENOSPC, "write made no progress")
        done += n


def _read_all(fd: int, view: memoryview) -> int:
    """Read into ``view`` until full or end of file; the bytes read."""
    done, total = 0, view.nbytes
    while done < total:
        n = os.readv(fd, [view[done:]])
        if n <= 0:
            break
        done += n
    return done


class FSL2Adapter(L2Adapter):
    """An L2 tier in a local or shared directory; see the module docstring for the format and guarantees."""

    config: FSAdapterConfig

    def __init__(self, config: FSAdapterConfig, context: L2AdapterContext) -> None:
        if config.io_workers:
            context = dataclasses.replace(context, io_workers=config.io_workers)
        base = os.path.abspath(config.base_path)
        os.makedirs(base, exist_ok=True)
        if config.relative_tmp_dir is None:
            tmp_dir = base
        else:
            tmp_dir = os.path.join(base, config.relative_tmp_dir)
            try:
                os.mkdir(tmp_dir)  # one level, as LMCache: a missing parent is a configuration error
            except FileExistsError:
                pass
        if not os.path.isdir(tmp_dir):
            raise NotADirectoryError(f"fs adapter temp directory {tmp_dir!r} is not a directory")
        if config.use_odirect:
            logger.warning("fs adapter: use_odirect is accepted for LMCache compatibility and ignored "
                           "(buffered I/O is used)")
        self.base_path = base
        self.tmp_dir = tmp_dir
        self._crc = config.checksum == "crc32"
        self._fsync = config.fsync
        self._host = _host_tag()
        self._tmp_prefix = f".lmcs-{self._host}.{os.getpid()}."
        self._seq = itertools.count()
        self.checksum_failures = 0
        self.stale_tmp_removed = 0
        super().__init__(config, context)

    # -- paths ------------------------------------------------------------------------

    def _path(self, key: ObjectKey) -> str:
        path = os.path.join(self.base_path, fs_file_name(key))
        # The codec never yields '/', '.' or '..'; this guards the invariant this module relies on.
        if os.path.dirname(path) != self.base_path:
            raise ValueError(f"key {key!r} would name a file outside {self.base_path!r}")
        return path

    def _new_tmp_path(self) -> str:
        return os.path.join(self.tmp_dir, f"{self._tmp_prefix}{next(self._seq)}.tmp")

    def _payload_size(self, file_size: int) -> int | None:
        """The object size a file of ``file_size`` bytes holds; None for an empty or truncated one."""
        size = file_size - TRAILER_SIZE if self._crc else file_size
        return size if size > 0 else None

    # -- the author's surface ------------------------------------------------------------

    def _put(self, key: ObjectKey, data: memoryview) -> None:
        final = self._path(key)
        if os.path.isfile(final):
            return  # content-addressed: the same key holds the same bytes
        tmp = self._new_tmp_path()
        fd = os.open(tmp, _OPEN_WRITE, 0o644)
        try:
            try:
                _write_all(fd, data)
                if self._crc:
                    _write_all(fd, memoryview(crc32_trailer(data)))
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if self._fsync:
            self._fsync_dir(self.base_path)

    def _get(self, key: ObjectKey, out: memoryview) -> bool:
        try:
            path = self._path(key)
            fd = os.open(path, _OPEN_READ)
        except (FileNotFoundError, NotADirectoryError, UnencodableKeyError):
            return False  # absent (a key the FS tier cannot name is never stored: a miss, not a fault)
        try:
            st = os.fstat(fd)
            n = out.nbytes
            if self._crc:
                if st.st_size == n:  # no trailer: written without checksums
                    self._discard(key, path, st, "no checksum trailer")
                    return False
                if st.st_size != n + TRAILER_SIZE:
                    return False  # another size: the caller expects another layout; not corruption
                if _read_all(fd, out) != n:
                    return False
                trailer = os.pread(fd, TRAILER_SIZE, n)
                if trailer != crc32_trailer(out):
                    self._discard(key, path, st, "checksum mismatch")
                    return False
                return True
            if st.st_size != n and not (st.st_size == n + TRAILER_SIZE
                                        and os.pread(fd, len(CRC32_MAGIC), n) == CRC32_MAGIC):
                return False  # a crc32 writer's file is readable here: its trailer is skipped, as LMCache does
            return _read_all(fd, out) == n
        finally:
            os.close(fd)

    def _size(self, key: ObjectKey) -> int | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError, UnencodableKeyError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return self._payload_size(st.st_size)

    def _remove(self, key: ObjectKey) -> int | None:
        try:
            path = self._path(key)
            size = os.stat(path).st_size
            os.unlink(path)
        except (FileNotFoundError, UnencodableKeyError):
            return None
        return self._payload_size(size) or 0

    def _list(self, model_name: str | None, cursor: str | None,
              limit: int) -> tuple[list[tuple[ObjectKey, int]], str | None]:
        """A page in file-name order after ``cursor``; objects stored meanwhile may or may not show.

        Each page scans the directory once (``O(n log limit)``) and keeps no state,
        so a page token stays valid across restarts and between servers.
        """
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"page size must be a positive integer, got {limit!r}")
        after = decode_cursor(cursor) if cursor is not None else None
        prefix = model_name.replace("/", _SEP) + "@" if model_name is not None else ""
        with os.scandir(self.base_path) as it:
            names = (e.name for e in it
                     if e.name.endswith(FS_NAME_SUFFIX) and e.name.startswith(prefix)
                     and (after is None or e.name > after))
            page = heapq.nsmallest(limit + 1, names)
        more = len(page) > limit
        page = page[:limit]
        items: list[tuple[ObjectKey, int]] = []
        for name in page:
            key = try_parse_fs_file_name(name)
            if key is None or (model_name is not None and key.model_name != model_name):
                continue  # another tool's file
            try:
                st = os.stat(os.path.join(self.base_path, name), follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted since the scan
            size = self._payload_size(st.st_size) if stat.S_ISREG(st.st_mode) else None
            if size is not None:
                items.append((key, size))
        return items, (encode_cursor(page[-1]) if more else None)

    def _recover(self) -> list[tuple[ObjectKey, int]]:
        if self.tmp_dir != self.base_path:
            self._clean_tmp_dir()  # a dedicated temp dir is small: cleaned even without recovery
        if not self.config.recover_on_start:
            return []
        found: list[tuple[ObjectKey, int]] = []
        now = time.time()
        with os.scandir(self.base_path) as it:
            for entry in it:
                name = entry.name
                if not name.endswith(FS_NAME_SUFFIX):
                    if self.tmp_dir == self.base_path:
                        self._maybe_remove_tmp(entry, now)
                    continue
                key = try_parse_fs_file_name(name)
                if key is None:
                    continue  # another tool's file
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue  # symlinks and directories are never objects
                size = self._payload_size(st.st_size)
                if size is not None:
                    found.append((key, size))
        return found

    def _status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "FSL2Adapter",
            "base_path": self.base_path,
            "tmp_dir": self.tmp_dir,
            "checksum": self.config.checksum,
            "fsync": self._fsync,
            "use_odirect": False,
            "checksum_failures": self.checksum_failures,
            "stale_tmp_removed": self.stale_tmp_removed,
        }
        if not os.path.isdir(self.base_path):
            doc["is_healthy"] = False
            doc["error"] = f"base_path {self.base_path!r} is not a directory"
        return doc

    # -- helpers ---------------------------------------------------------------------------

    def _discard(self, key: ObjectKey, path: str, opened: os.stat_result, why: str) -> None:
        """Remove a corrupt object so it can be stored again, and drop it from the accounting."""
        with self._lock:
            self.checksum_failures += 1
        logger.warning("fs adapter: %s in %s; discarding the file", why, os.path.basename(path))
        try:
            now = os.stat(path)
            # Only the file we read: a writer may have replaced it with a good copy meanwhile.
            if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
                os.unlink(path)
        except FileNotFoundError:
            pass
        self._account_deleted([key])

    def _clean_tmp_dir(self) -> None:
        now = time.time()
        try:
            with os.scandir(self.tmp_dir) as it:
                for entry in it:
                    self._maybe_remove_tmp(entry, now)
        except FileNotFoundError:
            pass

    def _maybe_remove_tmp(self, entry: os.DirEntry[str], now: float) -> None:
        """Remove ``entry`` if it is one of our temp files whose writer is gone."""
        match = _TMP_NAME.fullmatch(entry.name)
        if match is None:
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        pid = int(match["pid"])
        ours = match["host"] == self._host
        dead = ours and pid != os.getpid() and not _pid_alive(pid)
        if dead or now - st.st_mtime > STALE_TMP_SECONDS:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                return
            with self._lock:
                self.stale_tmp_removed += 1

    @staticmethod
    def _fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_object_files(base_path: str) -> Iterator[tuple[str, ObjectKey]]:
    """``(file name, key)`` of every object file in ``base_path`` (a helper for tools and tests)."""
    with os.scandir(base_path) as it:
        for entry in it:
            key = try_parse_fs_file_name(entry.name)
            if key is not None and entry.is_file(follow_symlinks=False):
                yield entry.name, key


def make_adapter(config: FSAdapterConfig, context: L2AdapterContext) -> FSL2Adapter:
    """The factory registered for type ``fs``."""
    return FSL2Adapter(config, context)


__all__ = [
    "CRC32_MAGIC",
    "TRAILER_SIZE",
    "TYPE_NAME",
    "FSAdapterConfig",
    "FSL2Adapter",
    "crc32_trailer",
    "decode_cursor",
    "encode_cursor",
    "iter_object_files",
    "make_adapter",
]

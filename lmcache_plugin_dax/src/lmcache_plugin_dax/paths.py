"""Which paths the reconfigure routes may map (confinement), and what sysfs says a device is (the probe).

Confinement (``POST /reconfigure/dax/add``): the route must not become a way to map
an arbitrary file into the server. A path is accepted only when

* it is absolute, without NUL, and has no ``..`` segment (refused before anything
  is resolved);
* it lies under an allowed root both as written and once every symlink is resolved:
  ``/dev/dax*`` (a DAX character device: the final component starts with ``dax``
  directly in ``/dev``) or a directory the operator listed (config ``allowed_paths``
  and the launcher flag ``--dax-allowed-paths``; each root is resolved too), so a
  symlink inside an allowed root that points out of it is refused;
* what it resolves to is a regular file or a character device.

Devices listed in the adapter's own config are the operator's choice and are not
confined. The probe is read-only: ``/sys/dev/char/<major>:<minor>`` names the
kernel device, ``/sys/bus/dax/devices/<name>/`` its driver (``device_dax`` →
``devdax``, ``kmem`` → ``system-ram``, none → ``unbound``), ``size`` and ``align``.
Anything it cannot read leaves the answer ``unknown`` (inconclusive), which does
not block an add.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Any

DEV_DAX_PREFIX = "/dev/dax"


class Refused(ValueError):
    """A path the route must not map (answered 400)."""


@dataclass(frozen=True)
class Resolved:
    """A confined path: as given (normalised: no ``//`` or ``/./``), resolved, and the stat of what it resolves to."""

    path: str
    real: str
    st: os.stat_result


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _dev_dax(path: str) -> bool:
    return os.path.dirname(path) == "/dev" and os.path.basename(path).startswith("dax")


def confine(path: str, roots: list[str]) -> Resolved:
    """``path`` checked against the rules above; :class:`Refused` says why not."""
    if not isinstance(path, str) or not path.strip() or "\x00" in path:
        raise Refused("device_path must be a non-empty path without NUL")
    path = path.strip()
    if not os.path.isabs(path):
        raise Refused(f"device_path must be absolute: {path!r}")
    if ".." in path.split("/"):
        raise Refused(f"device_path must not contain '..': {path!r}")
    normal = os.path.normpath(path)
    real = os.path.realpath(normal)
    real_roots = [os.path.realpath(r) for r in roots if r]
    as_written = _dev_dax(normal) or any(_under(normal, r) or _under(normal, os.path.normpath(r)) for r in roots if r)
    resolved = _dev_dax(real) or any(_under(real, r) for r in real_roots)
    if not (as_written and resolved):
        where = ", ".join(["/dev/dax*", *roots])
        raise Refused(f"device_path {path!r} is outside the allowed paths ({where})"
                      + ("" if not as_written else f"; it resolves to {real!r}"))
    try:
        st = os.stat(real)
    except OSError as exc:
        raise Refused(f"device_path {path!r} cannot be opened: {exc.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        raise Refused(f"device_path {path!r} is neither a character device nor a regular file")
    return Resolved(normal, real, st)


def identity(st: os.stat_result) -> tuple[bool, int, int] | None:
    """What two paths mapping the same device share: (char?, rdev, 0) or (False, dev, inode)."""
    if stat.S_ISCHR(st.st_mode):
        return True, st.st_rdev, 0
    if stat.S_ISREG(st.st_mode):
        return False, st.st_dev, st.st_ino
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def probe(path: str, sysfs_root: str = "/sys") -> dict[str, Any]:
    """The ``physical`` record of spec §5.3 for ``path`` (never raises)."""
    record: dict[str, Any] = {"device_path": path, "mode": "unknown", "present": False, "major": None,
                              "minor": None, "kernel_name": None, "driver": None, "size_bytes": None,
                              "align_bytes": None, "probed_at": time.time(), "detail": None}
    try:
        st = os.stat(path)
    except OSError as exc:
        record.update(mode="absent", detail=exc.strerror)
        return record
    record["present"] = True
    if stat.S_ISREG(st.st_mode):
        record.update(mode="not-a-device", size_bytes=st.st_size, detail="regular file")
        return record
    if not stat.S_ISCHR(st.st_mode):
        record.update(mode="not-a-device", detail="neither a character device nor a regular file")
        return record
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    record.update(major=major, minor=minor)
    char_dir = os.path.join(sysfs_root, "dev", "char", f"{major}:{minor}")
    if not os.path.exists(char_dir):
        record["detail"] = f"{char_dir} not found"
        return record
    name = os.path.basename(os.path.realpath(char_dir))
    record["kernel_name"] = name
    bus_dir = os.path.join(sysfs_root, "bus", "dax", "devices", name)
    if not os.path.isdir(bus_dir):
        record["detail"] = f"{name} is not on the dax bus"
        return record
    record["size_bytes"] = _int(_read(os.path.join(bus_dir, "size")))
    record["align_bytes"] = _int(_read(os.path.join(bus_dir, "align")))
    driver_link = os.path.join(bus_dir, "driver")
    if not os.path.lexists(driver_link):
        record.update(mode="unbound", detail="no driver bound")
        return record
    driver = os.path.basename(os.path.realpath(driver_link))
    record["driver"] = driver
    record["mode"] = {"device_dax": "devdax", "kmem": "system-ram"}.get(driver, "unknown")
    return record


def probe_refusal(record: dict[str, Any], size_bytes: int) -> str | None:
    """Why the add gate refuses a probed device, or None (inconclusive probes proceed)."""
    mode = record["mode"]
    if mode == "system-ram":
        return f"{record['device_path']} is bound to kmem (system-ram), not devdax"
    if mode == "unbound":
        return f"{record['device_path']} has no driver bound (unbound)"
    if mode == "devdax" and record["size_bytes"] is not None and record["size_bytes"] < size_bytes:
        return f"{record['device_path']} holds {record['size_bytes']} bytes, fewer than the {size_bytes} requested"
    return None


def device_capacity(st: os.stat_result, record: dict[str, Any]) -> int | None:
    """The device's size when it can be determined: a file's length, a devdax's sysfs size."""
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    return record.get("size_bytes")


def scan_directory(directory: str) -> list[dict[str, Any]]:
    """The watcher's view: ``dax*`` entries of ``directory`` that are character devices or regular files."""
    found = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return found
    for entry in entries:
        if not entry.name.startswith("dax"):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue
        kind = "char" if stat.S_ISCHR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else None
        if kind:
            found.append({"device_path": entry.path, "kind": kind})
    return found

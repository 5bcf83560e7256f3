"""An attacker process for tests/test_security_*.py, run as an unprivileged user (``runuser -u nobody``).

Standard library only (the unprivileged user cannot read the project's virtual
environment): it speaks ZMTP 3.0 (NULL mechanism, DEALER) over a plain TCP
socket. The test encodes the requests with our wire codec and passes them as
hex; this script creates/truncates its own /dev/shm files, sends, and prints
the replies (hex) as one JSON document.

stdin: ``{"host": ..., "port": ..., "steps": [...]}`` (or ``"unix": path`` for an ipc:// endpoint), each step one of
``{"create": name, "size": n}``, ``{"truncate": name, "size": n}``,
``{"send": [hex frames]}``, ``{"recv": timeout_s}``, ``{"raw": hex}`` (bytes as they are),
``{"closed": timeout_s}`` (true once the server dropped the connection).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys


def _greeting() -> bytes:
    return b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def _command(name: bytes, props: dict[bytes, bytes]) -> bytes:
    body = bytes([len(name)]) + name
    for key, value in props.items():
        body += bytes([len(key)]) + key + struct.pack(">I", len(value)) + value
    header = b"\x04" + bytes([len(body)]) if len(body) < 256 else b"\x06" + struct.pack(">Q", len(body))
    return header + body


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    flags = _read_exact(sock, 1)[0]
    size = struct.unpack(">Q", _read_exact(sock, 8))[0] if flags & 0x02 else _read_exact(sock, 1)[0]
    return flags, _read_exact(sock, size)


def _send_message(sock: socket.socket, frames: list[bytes]) -> None:
    out = b""
    for i, frame in enumerate(frames):
        more = 0x01 if i < len(frames) - 1 else 0
        out += (bytes([more, len(frame)]) if len(frame) < 256 else bytes([more | 0x02]) + struct.pack(">Q", len(frame)))
        out += frame
    sock.sendall(out)


def _recv_message(sock: socket.socket) -> list[bytes]:
    frames = []
    while True:
        flags, body = _read_frame(sock)
        if flags & 0x04:  # a command (PING/...): not part of a message
            continue
        frames.append(body)
        if not flags & 0x01:
            return frames


def main() -> None:
    spec = json.load(sys.stdin)
    try:
        if "unix" in spec:  # an ipc:// endpoint
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(spec["unix"])
        else:
            sock = socket.create_connection((spec["host"], spec["port"]), timeout=30)
    except OSError as exc:
        json.dump({"uid": os.getuid(), "connect_error": type(exc).__name__}, sys.stdout)
        return
    sock.sendall(_greeting())
    _read_exact(sock, 64)
    sock.sendall(_command(b"READY", {b"Socket-Type": b"DEALER"}))
    flags, _ = _read_frame(sock)  # the server's READY
    results: list[object] = []
    for step in spec["steps"]:
        if "create" in step:
            fd = os.open(f"/dev/shm/{step['create']}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, step["size"])
            os.close(fd)
            results.append(None)
        elif "truncate" in step:
            os.truncate(f"/dev/shm/{step['truncate']}", step["size"])
            results.append(None)
        elif "send" in step:
            _send_message(sock, [bytes.fromhex(h) for h in step["send"]])
            results.append(None)
        elif "raw" in step:  # bytes as they are (a frame header promising more than is sent, ...)
            sock.sendall(bytes.fromhex(step["raw"]))
            results.append(None)
        elif "closed" in step:  # wait up to N s for the server to drop the connection
            sock.settimeout(step["closed"])
            try:
                results.append(sock.recv(1) == b"")
            except (ConnectionError, OSError):
                results.append(True)
        elif "recv" in step:
            sock.settimeout(step["recv"])
            results.append([f.hex() for f in _recv_message(sock)])
    sock.close()
    json.dump({"uid": os.getuid(), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()

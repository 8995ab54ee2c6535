#!/usr/bin/env python3
"""One HTTP/2 (h2c, prior knowledge) request with headers exactly as given, including pairs
curl never sends (a `host` that differs from `:authority`). Prints the response body (DATA
frames of stream 1); exits non-zero when no complete response arrives within 5 s.

Usage: h2_raw.py HOST PORT NAME=VALUE... (pseudo-headers first, e.g. :method=GET)
"""
import socket
import struct
import sys


def literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman coding."""
    out = b"\x00"
    for text in (name.encode(), value.encode()):
        if len(text) >= 127:
            raise SystemExit("header too long for this client")
        out += bytes([len(text)]) + text
    return out


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def main() -> int:
    host, port, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    block = b"".join(literal(*pair.split("=", 1)) for pair in pairs)
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 0x5, 1, block))
    buffer, body = b"", b""
    while True:
        while len(buffer) < 9 or len(buffer) < 9 + int.from_bytes(buffer[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                sys.stdout.write(body.decode(errors="replace"))
                return 1
            buffer += chunk
        length = int.from_bytes(buffer[:3], "big")
        kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
        payload, buffer = buffer[9 : 9 + length], buffer[9 + length :]
        if kind == 4 and not flags & 1:
            sock.sendall(frame(4, 1, 0, b""))  # acknowledge the server's SETTINGS
        if stream == 1 and kind == 0:
            body += payload
        if stream == 1 and kind in (0, 1) and flags & 1:
            sys.stdout.write(body.decode(errors="replace"))
            return 0
        if kind == 7 or (kind == 3 and stream == 1):  # GOAWAY, RST_STREAM
            sys.stdout.write(body.decode(errors="replace"))
            return 1


if __name__ == "__main__":
    sys.exit(main())

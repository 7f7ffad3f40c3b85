"""WebSocket subscribers for bench/demo.sh that count the events they receive.

    python3 bench/ws_count.py HOST:PORT PATH CLIENTS OUT

Opens CLIENTS WebSocket connections to ws://HOST:PORT/PATH, writes "ready" to
OUT.ready once every handshake got its 101, and on SIGINT or SIGTERM writes
"events lagged closed cpu_seconds" to OUT and exits: the event messages all
clients received (every event is a JSON object starting with {"id":), the
"lagged" notices among them (a client fell behind and lost its oldest), the
connections the server closed, and this process's own CPU time.

Raw sockets, not a WebSocket library: the frames are counted by their payload
with bytes.count, so that counting 10 subscribers' hundreds of thousands of
messages per second takes little of a 2-core machine's CPU from the servers.
The servers send unmasked text frames of well under 64 KiB; pings (every 30 s
from the demo) are not answered, which does not matter for runs of seconds.
"""
import os
import selectors
import signal
import socket
import sys

EVENT, LAGGED = b'{"id":', b'"lagged"'


def handshake(host, port, path):
    sock = socket.create_connection((host, port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            sys.exit(f"{host}:{port}{path}: closed during the handshake")
        head += chunk
    head, rest = head.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        sys.exit(f"{host}:{port}{path}: {head.splitlines()[0].decode()}")
    sock.setblocking(False)
    return sock, rest


def main():
    address, path, clients, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    host, port = address.rsplit(":", 1)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    counts = {EVENT: 0, LAGGED: 0}

    def count(tails, data):
        # Each pattern's last len - 1 bytes are kept: a match split between two
        # reads is found, and none can be counted twice.
        for pattern in counts:
            text = tails.get(pattern, b"") + data
            counts[pattern] += text.count(pattern)
            tails[pattern] = text[1 - len(pattern):]

    selector = selectors.DefaultSelector()
    closed = 0
    for _ in range(clients):
        sock, rest = handshake(host, int(port), path)
        selector.register(sock, selectors.EVENT_READ, {})
        count(selector.get_key(sock).data, rest)
    with open(out + ".ready", "w") as f:
        f.write("ready\n")
    while not stop:
        for key, _ in selector.select(timeout=0.1):
            try:
                data = key.fileobj.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionError:
                data = b""
            if not data:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                closed += 1
                continue
            count(key.data, data)
    cpu = sum(os.times()[:2])
    with open(out, "w") as f:
        f.write(f"{counts[EVENT]} {counts[LAGGED]} {closed} {cpu:.3f}\n")


if __name__ == "__main__":
    main()

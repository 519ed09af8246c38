#!/usr/bin/env python3
"""Same-host revocation, measured as issue 31 asks: N tokens revoked one by one with the CLI while a gateway
on the same host serves; right after each CLI run returns, one request with the revoked token on a kept-alive
connection. Counts the requests that still got through (the gateway answered anything but 401; the failure throttle is off, so every revoked token's answer is
its own).

No upstream is needed: the route points at a closed port, so a token let through gets 502, a refused one 401.
Usage: benches/same_host_revoke.py [N]   (uses target/release/tokengate and the seed_tokens example;
       build them first: cargo build --release --bin tokengate --example seed_tokens)
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
BIN = os.path.abspath("target/release/tokengate")
SEED = os.path.abspath("target/release/examples/seed_tokens")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    d = tempfile.mkdtemp(prefix="tg-revoke-")
    subprocess.run([SEED, "--db", f"{d}/t.db", "--count", str(N), "--users", "10",
                    "--write-tokens", f"{d}/tokens.txt", "--keep", str(N)], check=True,
                   capture_output=True)
    tokens = open(f"{d}/tokens.txt").read().split()
    port, admin = free_port(), free_port()
    with open(f"{d}/t.toml", "w") as f:
        f.write(f"""[gateway]
listen = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[store]
path = "t.db"
[log]
access = "off"
[throttle]
max_failures = 0
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "127.0.0.1:1"
""")
    gw = subprocess.Popen([BIN, "serve", "--config", f"{d}/t.toml"], cwd=d,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        conn = socket.create_connection(("127.0.0.1", port))

        def status(token):
            nonlocal conn
            req = f"GET /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
            for _ in range(2):
                try:
                    conn.sendall(req)
                    got = b""
                    while b"\r\n\r\n" not in got:
                        chunk = conn.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed")
                        got += chunk
                    head, _, rest = got.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            length = int(v)
                        if k.strip().lower() == b"connection" and b"close" in v.lower():
                            length = -1 - length
                    n = length if length >= 0 else -1 - length
                    while len(rest) < n:
                        rest += conn.recv(65536)
                    if length < 0:
                        conn.close()
                        conn = socket.create_connection(("127.0.0.1", port))
                    return int(head.split(b" ")[1])
                except (ConnectionError, OSError):
                    conn = socket.create_connection(("127.0.0.1", port))
            raise RuntimeError("no answer")

        assert status(tokens[0]) == 502, "a live token is let through (502 from the closed upstream)"
        through, cli_times = 0, []
        for i, token in enumerate(tokens, start=1):
            t = time.monotonic()
            subprocess.run([BIN, "token", "revoke", "--config", f"{d}/t.toml", str(i)], check=True,
                           capture_output=True)
            cli_times.append(time.monotonic() - t)
            got = status(token)
            if got != 401:
                through += 1
                if os.environ.get("VERBOSE"):
                    print(f"token {i}: {got} after the CLI returned; again: {status(token)}")
        cli_times.sort()
        print(f"{N} CLI revokes: {through} requests let through after the CLI returned; "
              f"CLI run time p50 {cli_times[len(cli_times) // 2] * 1000:.1f} ms, "
              f"p99 {cli_times[int(len(cli_times) * 0.99)] * 1000:.1f} ms, "
              f"max {cli_times[-1] * 1000:.1f} ms")
    finally:
        gw.terminate()
        gw.wait()


if __name__ == "__main__":
    main()

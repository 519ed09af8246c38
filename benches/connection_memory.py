#!/usr/bin/env python3
"""What a client connection costs the gateway in memory, measured as an attacker would (issue 31).

Starts `tokengate serve` (the binary given, default target/release/tokengate) on a fresh directory with
one route to a closed port, then measures VmRSS of the process:

  1. baseline, after 200 requests;
  2. N silent plain connections (connected, nothing sent);
  3. N idle keep-alive connections (one request answered on each, then nothing);
  4. N stalled maximal heads (just under the default head limit, never ended);
  5. N silent TLS connections after the handshake (a self-signed certificate made with openssl);
  6. RSS 3 s after the connections closed, against the baseline.

Each scenario runs on a fresh gateway (memory one frees would be reused by the next). Per-connection
figures are (RSS with the connections - RSS before) / N. Usage:
  benches/connection_memory.py [BINARY] [N]      (N default 1000; ulimit -n must allow 2N + 100)
"""

import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/tokengate"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settle(pid, seconds=1.5):
    time.sleep(seconds)
    return rss_kib(pid)


def request(port, path="/iot/x"):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    while s.recv(65536):
        pass
    s.close()


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * N + 200)), hard))
    d = tempfile.mkdtemp(prefix="tg-mem-")
    port, tls_port, admin = free_port(), free_port(), free_port()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True)
    def write_config(per_address):
        with open(f"{d}/tokengate.toml", "w") as f:
            f.write(f"""
[gateway]
listen = "127.0.0.1:{port}"
header_timeout = "120s"
keepalive_timeout = "120s"
max_connections = {4 * N}
{per_address}[tls]
listen = "127.0.0.1:{tls_port}"
[[tls.certificates]]
cert = "cert.pem"
key = "key.pem"
[admin]
listen = "127.0.0.1:{admin}"
[store]
path = "tokengate.db"
[log]
access = "off"
[[routes]]
name = "iot"
path_prefix = "/iot"
upstream = "127.0.0.1:1"
auth = "none"
""")
    # Older binaries (before issue 31) have no per-address limit to lift.
    write_config(f"max_connections_per_address = {4 * N}\n")
    check = subprocess.run([BIN, "check-config", "--config", f"{d}/tokengate.toml"], capture_output=True, text=True)
    new = "max_connections_per_address" not in check.stderr
    if not new:
        write_config("")
    # A maximal head that never ends: just under the default head limit (32 KiB since issue 31, 64 KiB
    # before), as nginx's worst case is measured with its default buffers.
    pad = (31 if new else 63) * 1024
    results = {"binary": BIN, "connections": N}

    def scenario(name, open_one):
        """A fresh gateway per scenario: memory freed by one would be reused by the next."""
        gw = subprocess.Popen([os.path.abspath(BIN), "serve", "--config", f"{d}/tokengate.toml"],
                              cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1)
                    break
                except Exception:
                    time.sleep(0.1)
            for _ in range(200):
                request(port)
            base = settle(gw.pid)
            conns = [open_one() for _ in range(N)]
            held = settle(gw.pid)
            for c in conns:
                c.close()
            after = settle(gw.pid, 3)
            results[name] = {
                "baseline_kib": base,
                "bytes_per_connection": round((held - base) * 1024 / N),
                "after_close_vs_baseline": round(after / base, 3),
            }
        finally:
            gw.terminate()
            gw.wait()

    def silent():
        return socket.create_connection(("127.0.0.1", port))

    def idle_keepalive():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /iot/x HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        head, _, rest = got.partition(b"\r\n\r\n")
        length = int([l.split(b":")[1] for l in head.split(b"\r\n")
                      if l.lower().startswith(b"content-length")][0])
        while len(rest) < length:
            rest += s.recv(65536)
        return s

    def stalled_head():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /iot/x HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * pad)
        return s

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def tls_silent():
        raw = socket.create_connection(("127.0.0.1", tls_port))
        return ctx.wrap_socket(raw, server_hostname="localhost")

    scenario("silent_plain", silent)
    scenario("idle_keepalive", idle_keepalive)
    scenario("stalled_maximal_head", stalled_head)
    scenario("silent_tls", tls_silent)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

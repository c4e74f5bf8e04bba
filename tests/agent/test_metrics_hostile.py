"""--metrics against hostile local clients: 127.0.0.1 is open to every user on the host, so what
a client can make the agent hold (descriptors, threads, memory, time) must be bounded, and a
scrape must still get through while such clients hang on.

Run with the poll sensor: the endpoint is the same whatever the sensor, and no BPF is needed.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request

from tests.agent.test_metrics_status import free_port
from tests.support.wait import until


def agent(watch, tmp_path):
    port = free_port()
    w = watch("--sensor", "poll", "--metrics", f"127.0.0.1:{port}", "--stats-interval", "1",
              "--state-dir", str(tmp_path / "state"))
    w.sensor_line()
    until(lambda: scrape(port), 30, "a first scrape with stats in it")
    return w, port


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    return text if "procsentry_uptime_seconds" in text else None


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def connect_many(port: int, n: int, first: bytes = b"") -> list[socket.socket]:
    """n connections opened in parallel (a burst, as an attacker would), each having sent
    `first` (sent in a thread: a server that stops reading must not block the test)."""
    socks: list[socket.socket] = []
    lock = threading.Lock()

    def one():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            return
        with lock:
            socks.append(s)
        if first:
            try:
                s.sendall(first)
            except OSError:
                pass  # cut off by the server: what it should do

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return socks


def test_idle_clients_hold_no_descriptors_and_a_scrape_gets_through(watch, tmp_path):
    """200 connections that send nothing: before, each kept a thread and a descriptor of the
    agent for as long as the client liked (1,000 of them took all 1024 descriptors of a root
    agent: the sensor could not read /proc any more and a process ran unseen)."""
    w, port = agent(watch, tmp_path)
    pid = w.proc.pid
    before = fds(pid)
    status = tmp_path / "state" / "status.json"
    socks = connect_many(port, 200)
    try:
        assert len(socks) == 200
        time.sleep(1)  # let the agent accept what it will
        held = fds(pid)
        assert held <= before + 20, f"{held - before} descriptors held for 200 idle clients"
        # a scrape still works while they hang on, and the agent goes on writing its status
        assert until(lambda: scrape(port), 10, "a scrape during the attack")
        written = status.stat().st_mtime
        until(lambda: status.stat().st_mtime > written, 10, "status.json written during the attack")
    finally:
        for s in socks:
            s.close()
    assert w.stop() == 0


def test_a_request_that_never_ends_is_cut_off(watch, tmp_path):
    """A client that sends a byte now and then (slowloris): cut after the deadline (10 s)."""
    _, port = agent(watch, tmp_path)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        start = time.monotonic()
        closed = False
        for c in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 60:
            try:
                s.sendall(bytes([c]))
                s.settimeout(1)
                if s.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        took = time.monotonic() - start
    assert closed, f"still connected after {took:.0f} s"
    assert took < 15


def test_huge_headers_do_not_grow_the_agent(watch, tmp_path):
    """32 clients each sending 99 header lines of 64 KB (what http.client allows) without ending
    the request: before, the agent held all of it, 6.4 MB a client (100 clients: 1.6 GB)."""
    w, port = agent(watch, tmp_path)
    pid = w.proc.pid
    before = rss_kib(pid)
    line = b"X-Big: " + b"a" * 65000 + b"\r\n"
    socks = connect_many(port, 32, b"GET /metrics HTTP/1.1\r\n" + line * 99)
    try:
        time.sleep(2)
        grown = rss_kib(pid) - before
        assert grown < 32 << 10, f"the agent grew by {grown} KiB"
        assert until(lambda: scrape(port), 10, "a scrape during the attack")
    finally:
        for s in socks:
            s.close()
    assert w.stop() == 0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_scrape_flood_does_not_take_the_agents_cpu(watch, tmp_path):
    """8 clients scraping as fast as they can: before, the agent served 1,267 scrapes a second
    and spent a whole CPU on them (the interpreter lock its pipeline needs). Served at
    20 a second now, and a scrape still gets through."""
    w, port = agent(watch, tmp_path)
    pid = w.proc.pid
    stop = time.monotonic() + 4
    served = [0]

    def loop():
        while time.monotonic() < stop:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                    if s.recv(65536):
                        served[0] += 1
                        while s.recv(65536):
                            pass
            except OSError:
                pass

    before = cpu_s(pid)
    start = time.monotonic()
    threads = [threading.Thread(target=loop, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    assert scrape(port), "no scrape during the flood"
    for t in threads:
        t.join(30)
    took = time.monotonic() - start
    used = cpu_s(pid) - before
    assert used < 0.3 * took, f"the agent spent {used:.1f} s of CPU in {took:.1f} s ({served[0]} scrapes)"
    assert w.stop() == 0

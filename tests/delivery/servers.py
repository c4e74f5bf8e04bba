"""The real collectors, started by the tests on 127.0.0.1 with their own config and data
directories: rsyslogd (imrelp, or imtcp with TLS, writing each message's MSG to a file) and
redis-server (append-only file, fsync always). Also a CA maker (openssl) and two TCP peers
that are not collectors: one that accepts and never answers, one that records raw bytes.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"server not listening on {port} after {timeout}s: {log.read_text(errors='replace')[-2000:]}")


RUNNING: list["Server"] = []  # killed by the autouse fixture in conftest.py after each test


class Server:
    """Start/kill/restart one server on a fixed port and data directory."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "server.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, wait: bool = True) -> "Server":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir, start_new_session=True)
        if self not in RUNNING:
            RUNNING.append(self)
        if wait:
            wait_listening(self.port, self.proc, self.log)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            if sig != signal.SIGCONT:
                self.proc.send_signal(signal.SIGCONT)  # a stopped server cannot handle SIGTERM
            self.proc.send_signal(sig)
            self.proc.wait(15)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Rsyslog(Server):
    """rsyslogd -n -f CONF -i PIDFILE: imrelp (optionally TLS) or imtcp+TLS -> omfile, one MSG
    per line. Direct main queue and synchronous omfile: a message is in the file before the
    RELP acknowledgement."""

    def __init__(self, workdir: Path, port: int | None = None, tls: dict | None = None,
                 protocol: str = "relp", max_message: str = "512k") -> None:
        super().__init__(workdir, port)
        self.out = self.dir / "out.log"
        self.conf = self.dir / "rsyslog.conf"
        (self.dir / "work").mkdir(exist_ok=True)
        lines = [f'global(workDirectory="{self.dir}/work" maxMessageSize="{max_message}")']
        if protocol == "relp":
            lines.append('module(load="imrelp")')
            inp = f'input(type="imrelp" port="{self.port}" address="127.0.0.1" maxDataSize="{max_message}"'
            if tls:
                # certvalid: the client must present a certificate signed by the CA.
                inp += (f' tls="on" tls.cacert="{tls["ca"]}" tls.mycert="{tls["cert"]}"'
                        f' tls.myprivkey="{tls["key"]}" tls.authmode="certvalid"')
            lines.append(inp + ")")
        else:  # syslog over TLS, octet counting (RFC 5425)
            lines[0] = (f'global(workDirectory="{self.dir}/work" maxMessageSize="{max_message}" '
                        f'DefaultNetstreamDriverCAFile="{tls["ca"]}" DefaultNetstreamDriverCertFile="{tls["cert"]}" '
                        f'DefaultNetstreamDriverKeyFile="{tls["key"]}")')
            lines.append('module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                         'StreamDriver.Authmode="anon")')
            lines.append(f'input(type="imtcp" port="{self.port}" address="127.0.0.1")')
        lines += ['main_queue(queue.type="Direct")',
                  'template(name="msgonly" type="string" string="%msg%\\n")',
                  f'action(type="omfile" file="{self.out}" template="msgonly" asyncWriting="off")']
        self.conf.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.dir / "rsyslogd.pid")]

    def records(self) -> list[dict]:
        """Every JSON line stored (a line cut by a kill mid-write is not a record)."""
        out = []
        if not self.out.exists():
            return out
        for line in self.out.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


class Redis(Server):
    def __init__(self, workdir: Path, port: int | None = None, tls: dict | None = None) -> None:
        super().__init__(workdir, port)
        self.tls = tls

    def command(self) -> list[str]:
        cmd = [REDIS_SERVER, "--bind", "127.0.0.1", "--dir", str(self.dir), "--appendonly", "yes",
               "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        if self.tls:
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls["cert"],
                    "--tls-key-file", self.tls["key"], "--tls-ca-cert-file", self.tls["ca"],
                    "--tls-auth-clients", "no"]
        else:
            cmd += ["--port", str(self.port)]
        return cmd

    def client(self):
        import redis  # noqa: PLC0415
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def stream(self, key: str) -> list[dict]:
        c = self.client()
        try:
            return [json.loads(fields[b"json"]) for _id, fields in c.xrange(key)]
        finally:
            c.close()


def make_ca(d: Path, name: str, host: str = "127.0.0.1") -> dict:
    """A CA and a server certificate for `host` signed by it (openssl, RSA 2048, 1 day)."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / f"{name}-{x}" for x in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = d / f"{name}-ext.cnf"
    ext.write_text(f"subjectAltName=IP:{host}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "1",
        "-subj", f"/CN={name} test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={host}")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(ext))
    # a client certificate from the same CA (imrelp with TLS asks for one)
    ckey, ccsr, ccert = (d / f"{name}-{x}" for x in ("client.key", "client.csr", "client.pem"))
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ckey), "-out", str(ccsr), "-subj", "/CN=procsentry client")
    run("x509", "-req", "-in", str(ccsr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(ccert), "-days", "1", "-extfile", str(ext))
    for p in (ca_key, key, ckey):
        os.chmod(p, 0o600)
    return {"ca": str(ca), "cert": str(cert), "key": str(key), "client_cert": str(ccert), "client_key": str(ckey)}


class SilentPeer:
    """Accepts TCP connections and never reads or answers: a hung collector."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                self.conns.append(c)
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self._t.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


class RecordingPeer(SilentPeer):
    """Accepts connections and records every byte received (what went over the wire)."""

    def __init__(self) -> None:
        self.received = collections.defaultdict(bytearray)
        super().__init__()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self._read, args=(c, len(self.conns)), daemon=True).start()

    def _read(self, c: socket.socket, n: int) -> None:
        c.settimeout(0.5)
        while not self._stop:
            try:
                data = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            self.received[n] += data

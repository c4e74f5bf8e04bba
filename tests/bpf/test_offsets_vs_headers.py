"""BTF-resolved offsets agree with the kernel headers' layouts, where the headers match.

The sensor never trusts header layouts (they are usually another kernel's). In the kernel
matrix (`make test-kernels`), each guest has exactly matching headers: there the two sources
must agree member for member, which checks monitor/sensors/bpf/btf.py and monitor/sensors/bpf/offsets.py against the
compiler. On a host whose headers do not match the running kernel the comparison is
meaningless and the test skips, except under PROCSENTRY_VM=1, where it must run.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from monitor.sensors.bpf import offsets
from monitor.sensors.bpf.btf import BTF
from monitor.doctor import headers_release
from tests.support.wait import run

pytestmark = [pytest.mark.bpf, pytest.mark.vm]

HERE = Path(__file__).resolve().parent
# Structs defined only in kernel-internal headers (fs/mount.h) cannot be compiled here, and
# struct sock's header (net/sock.h) pulls linux/bpf.h, which clashes with bcc's own definitions
# on 6.12 (seen in the kernel matrix): both are checked against BTF only.
INTERNAL = {"mount", "mnt_namespace", "sock"}


def test_btf_offsets_match_matching_headers():
    release = os.uname().release
    build = Path(f"/lib/modules/{release}/build").resolve()
    if headers_release(build) != release:
        if os.environ.get("PROCSENTRY_VM") == "1":
            pytest.fail(f"the kernel matrix must have matching headers, found {build}")
        pytest.skip(f"headers at {build} are not for {release}: nothing to compare")
    from bcc import BPF  # noqa: PLC0415

    btf = BTF.from_file(offsets.BTF_PATH)
    checks = []
    for want in offsets.WANTS:
        if want.struct in INTERNAL:
            continue
        for path in want.paths:
            if btf.has_member(want.struct, path):
                checks.append((want.macro, want.struct, path, btf.member(want.struct, path).offset))
                break
    flags = " ".join(f"CHECK({i}, struct {s}, {p})" for i, (_m, s, p, _o) in enumerate(checks))
    b = BPF(src_file=str(HERE / "offsets_probe.bpf.c").encode(), cflags=[f"-DOFFSET_CHECKS={flags}"])
    try:
        b.attach_raw_tracepoint(tp=b"sched_process_exec", fn_name=b"probe")
        run(["/bin/true"], check=True)
        table = b[b"offs"]
        from_headers = {m: table[table.Key(i)].value for i, (m, _s, _p, _o) in enumerate(checks)}
    finally:
        b.cleanup()
    from_btf = {m: o for m, _s, _p, o in checks}
    assert len(checks) > 40
    assert from_headers == from_btf

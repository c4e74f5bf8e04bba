"""monitor/trusted.py: what a root daemon takes orders from is never another user's, even when
they race it, and a path that vanishes is a one-line refusal, never a traceback."""
from __future__ import annotations

import os
import threading
import time

import pytest

from monitor.trusted import Untrusted, check_ancestors, check_trusted_dir, read_trusted

NOBODY = 65534


def test_a_vanished_path_is_a_refusal_not_a_traceback(tmp_path):
    gone = tmp_path / "gone"
    for check in (lambda: read_trusted(str(gone), 1024), lambda: check_trusted_dir(str(gone)),
                  lambda: check_ancestors(str(gone / "x" / "rules.yml"))):
        with pytest.raises(Untrusted, match="No such file or directory"):
            check()


@pytest.mark.root
def test_a_symlink_swapped_in_while_opening_is_never_followed(tmp_path):
    """nobody alternates, at the name root reads, their symlink to a secret of root's and a
    regular file of their own. Checking the link's owner before a plain open let root read the
    secret about once in 170 tries here (monitor/trusted.py _open_no_foreign_link)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:SECRET\n")
    secret.chmod(0o600)
    name = tmp_path / "settings"
    link, own = tmp_path / "link", tmp_path / "own"
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            os.symlink(secret, link)
            os.lchown(link, NOBODY, NOBODY)
            os.rename(link, name)
            own.write_bytes(b"x = 1\n")
            os.chown(own, NOBODY, NOBODY)
            os.rename(own, name)

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    outcomes = {"read": 0, "refused": 0}
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                data = read_trusted(str(name), 1024)
            except Untrusted:
                outcomes["refused"] += 1
                continue
            outcomes["read"] += 1
            assert b"SECRET" not in data
    finally:
        stop.set()
        t.join()
    assert outcomes["refused"] > 100, outcomes  # the race was run, not missed

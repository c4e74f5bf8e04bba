"""The offsets the sensor's identity fields need, resolved from this kernel's BTF, and a cache
file that lacks some of them (written by an older build) is not trusted."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from monitor.sensors.bpf import offsets

if not Path(offsets.BTF_PATH).exists():
    pytest.skip(f"no {offsets.BTF_PATH}: nothing to resolve against", allow_module_level=True)


def test_pid_and_mm_members_for_vpid_and_the_image_layout():
    got = offsets.load(cache_dir=None)
    # struct upid { int nr; struct pid_namespace *ns; } (include/linux/pid.h): nr first, 16 bytes
    assert (got["UPID_NR"], got["UPID_NS"], got["UPID_SIZE"]) == (0, 8, 16)
    # mm_struct keeps these unsigned longs side by side (include/linux/mm_types.h)
    assert got["MM_END_CODE"] == got["MM_START_CODE"] + 8
    assert got["MM_ARG_END"] == got["MM_ARG_START"] + 8
    assert got["MM_START_STACK"] < got["MM_ARG_START"]
    assert got["PID_NUMBERS"] > got["PID_LEVEL"]


def test_a_cache_file_missing_a_macro_is_resolved_again(tmp_path):
    blob = Path(offsets.BTF_PATH).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    fresh = offsets.load(cache_dir=None)
    stale = {k: v for k, v in fresh.items() if k not in ("UPID_NR", "MM_END_CODE")}
    cache = tmp_path / f"offsets-{digest[:32]}.json"
    cache.write_text(json.dumps({"version": offsets.CACHE_VERSION, "btf_sha256": digest, "offsets": stale}))
    assert offsets.load(cache_dir=str(tmp_path)) == fresh
    # and a complete cache file is used as is (a value only the file has proves it was read)
    marked = dict(fresh, UPID_NR=12345)
    cache.write_text(json.dumps({"version": offsets.CACHE_VERSION, "btf_sha256": digest, "offsets": marked}))
    assert offsets.load(cache_dir=str(tmp_path))["UPID_NR"] == 12345


def _forged_cache(directory: Path, fresh: dict) -> Path:
    blob = Path(offsets.BTF_PATH).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    cache = directory / f"offsets-{digest[:32]}.json"
    cache.write_text(json.dumps({"version": offsets.CACHE_VERSION, "btf_sha256": digest,
                                 "offsets": dict(fresh, UPID_NR=12345)}))
    return cache


@pytest.mark.root
def test_a_cache_file_another_user_owns_is_not_read(tmp_path):
    fresh = offsets.load(cache_dir=None)
    cache = _forged_cache(tmp_path, fresh)
    os.chown(cache, 65534, 65534)  # nobody's: planted, not written by us
    assert offsets.load(cache_dir=str(tmp_path)) == fresh


@pytest.mark.root
def test_a_cache_dir_others_can_write_is_neither_read_nor_written(tmp_path, caplog):
    fresh = offsets.load(cache_dir=None)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: anyone could have put the file there
    _forged_cache(shared, fresh)
    with caplog.at_level("WARNING", logger="procsentry.offsets"):
        assert offsets.load(cache_dir=str(shared)) == fresh
    assert "writable by group or others (mode 1777)" in caplog.text
    assert len(list(shared.iterdir())) == 1  # nothing written there


@pytest.mark.root
def test_a_symlinked_cache_dir_is_not_written_through(tmp_path, caplog):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (tmp_path / "cache").symlink_to(target)
    with caplog.at_level("WARNING", logger="procsentry.offsets"):
        assert offsets.load(cache_dir=str(tmp_path / "cache")) == offsets.load(cache_dir=None)
    assert "a symlink is refused" in caplog.text
    assert list(target.iterdir()) == []

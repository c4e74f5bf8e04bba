"""The offsets the sensor's identity fields need, resolved from this kernel's BTF, and a cache
file that lacks some of them (written by an older build) is not trusted."""
from __future__ import annotations

import hashlib
import json
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

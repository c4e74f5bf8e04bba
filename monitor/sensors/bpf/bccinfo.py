"""Which bcc Python module this interpreter sees (for `procsentry doctor`): kept in the BPF
sensor's package, the only place that imports bcc."""
from __future__ import annotations

import os


def bcc_module() -> tuple[str, str] | None:
    """(version, directory) of the importable bcc module, or None when there is none."""
    try:
        import bcc  # noqa: PLC0415
    except ImportError:
        return None
    version = getattr(bcc, "__version__", None) or _version_from_lib()
    return version, os.path.dirname(bcc.__file__)


def _version_from_lib() -> str:
    try:
        from bcc import libbcc  # noqa: PLC0415
        return libbcc.lib.bcc_version().decode() if hasattr(libbcc.lib, "bcc_version") else "unknown"
    except Exception:  # noqa: BLE001 - only a version string
        return "unknown"

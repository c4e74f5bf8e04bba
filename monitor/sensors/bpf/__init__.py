"""The BPF sensor: the only package that imports bcc, in loader.py (in the loader child of the
handover backend; in the daemon itself only for the bcc backend).

btf.py and offsets.py resolve struct offsets from the running kernel's BTF; limits.py holds the
capture limits passed to the C side as -D flags; wire.py mirrors bpf/events.h; perfbuf.py reads
the perf rings; source.py turns decoded records into the sensor-neutral records of
monitor/records.py.
"""

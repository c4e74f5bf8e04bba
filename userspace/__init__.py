"""procsentry userspace readers: procfs snapshots of processes and their sockets.

Never imports ``monitor`` or bcc; everything here runs (and is tested) without BPF.
"""

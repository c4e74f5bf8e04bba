"""What the tests share: one bounded wait (`until`), one reader of a process's stat line
(`procstat`), one `procsentry watch` subprocess harness (`watch`), the collector of the
session's BPF sensor (`collector`) and the fixture procfs trees (`proctree`).

Importable as `tests.support.*` because pyproject.toml puts the checkout on pytest's
`pythonpath`; nothing here edits sys.path.
"""

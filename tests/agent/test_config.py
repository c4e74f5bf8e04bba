"""The settings file: keys derived from the watch parser, file < command line, one-line errors."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor import config
from monitor.events import EVENT_TYPES
from monitor.__main__ import build_parser, with_config

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PARSER = build_parser()
WATCH = config.watch_parser(PARSER)


def run(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != config.ENV}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True,
                          cwd=REPO, env=full, timeout=120, **kw)


def sample(k: config.Key):
    """A valid value for key k that is not its default, derived like the keys themselves: from
    the option's action (choices, switch, list, type), trying a few candidates on a custom
    type function. An option added to watch gets a sample without editing this test."""
    a = k.action
    if k.switch:
        return not bool(a.default)
    if a.choices is not None:
        return next(c for c in reversed(list(a.choices)) if c != a.default)
    if a.type is int:
        one = 7
    elif a.type is float:
        one = 2.5
    elif a.type in (None, str):
        one = f"/srv/x-{k.name}"
    else:
        for cand in (64, 3, 2.5, "exec,exit", "root", "1m", "127.0.0.1:9187", "x"):
            try:
                v = config.convert(config.Key(k.name, k.action), [cand] if k.is_list else cand)
            except ValueError:
                continue
            v = v[0] if k.is_list else v
            if v != a.default:
                one = cand
                break
        else:
            raise AssertionError(f"no sample value found for {k.name}")
    return [one, one] if k.is_list else one


def toml_value(v) -> str:
    return config._toml_value(v)


def test_every_watch_option_has_a_key():
    keys = config.keys(WATCH)
    for a in WATCH._actions:
        if a.option_strings and a.help != argparse.SUPPRESS and a.dest not in config.NOT_KEYS:
            assert a.dest in keys
    # and the known ones, by name
    assert {"format", "output", "sweep_interval", "stats_interval", "events", "uid", "environ",
            "perf_pages", "max_size", "max_backups", "metrics", "state_dir"} <= set(keys)
    assert "config" not in keys and "dump_bpf" not in keys and "help" not in keys


def test_every_option_round_trips_file_to_effective_settings(tmp_path):
    keys = config.keys(WATCH)
    values = {name: sample(k) for name, k in keys.items()}
    f = tmp_path / "all.toml"
    f.write_text("".join(f"{n} = {toml_value(v)}\n" for n, v in values.items()))
    p = run("config", "check", str(f))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    header, body = p.stdout.split("\n", 1)
    assert header == f"# {f}: valid; the effective settings of `procsentry watch --config {f}`"
    effective = tomllib.loads(body)
    assert set(effective) == set(keys)  # every key is set, none left at "not set"
    # The printed settings, read back, are the same settings: converted by each option's type.
    for name, k in keys.items():
        assert config.convert(k, effective[name]) == config.convert(k, values[name]), name
    # ... and exactly what watch would run with.
    argv = ["watch", "--config", str(f)]
    args = PARSER.parse_args(argv)
    assert with_config(PARSER, args, argv) is None
    for name, k in keys.items():
        assert getattr(args, name) == config.convert(k, values[name]), name
    assert args.config == str(f)


def test_command_line_overrides_the_file(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('stats_interval = 7\nsweep_interval = 3\nevents = "exec"\nenviron = true\n')
    argv = ["watch", "--config", str(f), "--stats-interval", "9", "--events", "exit,fork"]
    args = PARSER.parse_args(argv)
    assert with_config(PARSER, args, argv) is None
    assert args.stats_interval == 9.0  # the command line
    assert args.events == frozenset({"exit", "fork"})  # the command line
    assert args.sweep_interval == 3.0  # the file
    assert args.environ is True  # the file
    assert args.ancestry_depth == 10  # neither: the built-in default
    # the settings hash is that of the settings, wherever they came from
    argv2 = ["watch", "--config", "", "--stats-interval", "9", "--sweep-interval", "3",
             "--events", "fork,exit", "--environ"]
    args2 = PARSER.parse_args(argv2)
    os.environ[config.ENV] = ""
    try:
        assert with_config(PARSER, args2, argv2) is None
    finally:
        del os.environ[config.ENV]
    assert args2.config is None
    assert args2.settings_hash == args.settings_hash


@pytest.mark.parametrize("text, message", [
    ('stats_interval = 5\nsweep_intervall = 3\n',
     "{f}:2: unknown key 'sweep_intervall'"),
    ('# x\n\nsweep-interval = 3\n',
     "{f}:3: unknown key 'sweep-interval' (did you mean sweep_interval?)"),
    ('stats_interval = "fast"\n', "{f}:1: stats_interval: invalid value 'fast'"),
    ('sweep_interval = "30"\n', "{f}:1: sweep_interval: expected a number, not a string"),
    ('stats_interval = "30"\n',
     "{f}:1: stats_interval: expected a number, not a string (write 30 without quotes)"),
    ('count = 2.5\n', "{f}:1: count: invalid value 2.5"),
    ('ancestry_depth = 1.5\n', "{f}:1: ancestry_depth: expected an integer, not a number"),
    ('environ = "yes"\n', "{f}:1: environ: expected true or false, not a string"),
    ('comm = 12\n', "{f}:1: comm: expected a string, not an integer"),
    ('sensor = "ebpf"\n', "{f}:1: sensor: 'ebpf' is not one of auto, bpf, connector, poll"),
    ('events = "exec,forks"\n',
     "{f}:1: events: unknown event type(s): forks; choose from " + ", ".join(EVENT_TYPES)),
    ('perf_pages = 100\n', "{f}:1: perf_pages: must be a power of two, not 100"),
    ('max_size = "ten megs"\n',
     "{f}:1: max_size: not a size: 'ten megs' (e.g. 4096, 64k, 100m, 1g)"),
    ('sweep_interval = [1, 2]\n', "{f}:1: sweep_interval: expected a number, not an array"),
    ('[watch]\nsweep_interval = 1\n', "{f}:1: unknown key 'watch'"),
    ('sweep_interval = \n', "{f}: not TOML: Invalid value (at line 1, column 18)"),
    ('a = "unterminated\n', "{f}: not TOML: Illegal character '\\n' (at line 1, column 18)"),
])
def test_bad_file_is_one_line_naming_key_and_line_exit_2(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    expected = f"procsentry: config: {message.format(f=f)}\n"
    for args in (("config", "check", str(f)), ("watch", "--config", str(f))):
        p = run(*args)
        assert (p.returncode, p.stderr, p.stdout) == (2, expected, ""), args


def test_unreadable_or_missing_file_exit_2(tmp_path):
    d = tmp_path / "dir.toml"
    d.mkdir()
    p = run("watch", "--config", str(d))
    assert (p.returncode, p.stderr) == (2, f"procsentry: config: {d}: cannot read: Is a directory\n")
    missing = tmp_path / "none.toml"
    p = run("config", "check", str(missing))
    assert (p.returncode, p.stderr) == (2, f"procsentry: config: {missing}: cannot read: No such file or directory\n")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"a = 1\n\xff\xfe\n")
    p = run("watch", "--config", str(binary))
    assert (p.returncode, p.stderr) == (2, f"procsentry: config: {binary}: not TOML: not UTF-8 at byte 6\n")


@pytest.mark.root
def test_a_file_others_can_change_is_refused(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("count = 1\n")
    f.chmod(0o666)
    p = run("config", "check", str(f))
    assert (p.returncode, p.stderr) == (
        2, f"procsentry: config: {f}: writable by group or others (mode 0666); refusing to use it\n")
    f.chmod(0o644)
    os.chown(f, 65534, 65534)
    p = run("watch", "--config", str(f))
    assert (p.returncode, p.stderr) == (
        2, f"procsentry: config: {f}: owned by uid 65534, not 0; refusing to use it\n")


def run_bounded(*args: str) -> subprocess.CompletedProcess:
    """run(), in a process that cannot take the host's memory or hang the test for long: what a
    regression would do with the files below."""
    import resource  # noqa: PLC0415

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    full = {k: v for k, v in os.environ.items() if k != config.ENV}
    return subprocess.run([sys.executable, "-m", "monitor", *args], capture_output=True, text=True,
                          cwd=REPO, env=full, timeout=30, preexec_fn=limit)


@pytest.mark.root
def test_what_another_user_can_plant_at_the_path_is_refused_before_it_is_read(tmp_path):
    """--config naming a path in a directory another user can write (/tmp): whatever they put
    there is refused with one line, before a byte of it is read. Before, their FIFO hung the
    agent's start for ever, their symlink to /dev/zero was read until memory ran out, and one to
    a secret of root's was parsed, its first line described in the TOML error."""
    nobody = 65534
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo, 0o600)
    zero = tmp_path / "zero.toml"
    zero.symlink_to("/dev/zero")
    os.lchown(zero, nobody, nobody)
    secret = tmp_path / "secret"
    secret.write_text("hunter2 is the password\n")
    secret.chmod(0o600)
    steal = tmp_path / "steal.toml"
    steal.symlink_to(secret)
    os.lchown(steal, nobody, nobody)
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(2 << 20)
    big.chmod(0o600)
    expect = {
        fifo: f"procsentry: config: {fifo}: not a regular file; refusing to use it\n",
        zero: f"procsentry: config: {zero}: a symbolic link owned by uid {nobody}; refusing to follow it\n",
        steal: f"procsentry: config: {steal}: a symbolic link owned by uid {nobody}; refusing to follow it\n",
        big: f"procsentry: config: {big}: larger than 1024 KiB; refusing to read it\n",
    }
    for path, message in expect.items():
        for args in (("config", "check", str(path)), ("watch", "--config", str(path))):
            try:
                p = run_bounded(*args)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{args}: hung")
            assert (p.returncode, p.stderr) == (2, message), args
    # root's own symlink is followed (/etc may be managed with symlinks)
    good = tmp_path / "good.toml"
    good.write_text("count = 1\n")
    good.chmod(0o600)
    link = tmp_path / "link.toml"
    link.symlink_to(good)
    p = run_bounded("config", "check", str(link))
    assert p.returncode == 0, p.stderr
    assert "count = 1" in p.stdout


@pytest.mark.root
def test_file_unreadable_to_a_user_exit_2(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run as another user")
    f = tmp_path / "secret.toml"
    f.write_text("count = 1\n")
    f.chmod(0o600)
    tmp_path.chmod(0o755)
    p = run("config", "check", str(f), user=65534, group=65534)
    assert (p.returncode, p.stderr) == (2, f"procsentry: config: {f}: cannot read: Permission denied\n")


def test_default_path_and_environment(tmp_path):
    f = tmp_path / "env.toml"
    f.write_text("sweep_interval = 4\n")
    args = PARSER.parse_args(["watch"])
    os.environ[config.ENV] = str(f)
    try:
        assert with_config(PARSER, args, ["watch"]) is None
    finally:
        del os.environ[config.ENV]
    assert args.sweep_interval == 4.0 and args.config == str(f)
    # an explicitly named file that is missing is an error; the default one is optional
    assert config.chosen_path(None) == (config.DEFAULT_PATH, False)
    assert config.chosen_path("/x.toml") == ("/x.toml", True)


def test_config_default_is_valid_commented_and_complete(tmp_path):
    p = run("config", "default")
    assert p.returncode == 0 and p.stderr == ""
    text = p.stdout
    for name, k in config.keys(WATCH).items():
        assert f"\n#{name} = " in text or f"\n{name} = " in text, name
        first_words = " ".join((k.action.help or "").split()[:4])
        assert first_words in " ".join(text.replace("\n#  ", " ").split()), name
    f = tmp_path / "default.toml"
    f.write_text(text)
    settings = config.load(str(f), WATCH)
    # only what an installed agent sets differently is set; everything else is a comment
    expected = {k: v for k, v in config.AGENT_SETTINGS.items() if k in config.keys(WATCH)}
    keys = config.keys(WATCH)
    assert settings == {n: config.convert(keys[n], [v] if keys[n].is_list else v)
                        for n, v in expected.items()}
    p = run("config", "check", str(f))
    assert p.returncode == 0, p.stderr


@pytest.mark.bpf
def test_watch_runs_with_the_file(tmp_path, watch):
    """End to end: the file's filters and count are what watch runs with."""
    f = tmp_path / "w.toml"
    f.write_text(f'events = "existing"\npid = {os.getpid()}\ncount = 1\nformat = "json"\n')
    w = watch("--config", str(f))
    assert w.wait(120) == 0
    evs = w.snapshot()
    assert [(e["event"], e["pid"]) for e in evs] == [("existing", os.getpid())]

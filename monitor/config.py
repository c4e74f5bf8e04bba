"""The configuration file of `watch`: /etc/procsentry/procsentry.toml.

Its keys are not a second list to keep in step with the command line: they are derived from the
`watch` parser itself. Every option's argparse action gives its key (the action's dest:
`--sweep-interval` is `sweep_interval`), its type (the action's own type function converts the
value, exactly as it converts the command-line string), its choices, and whether it takes one
value, a list (`action="append"`) or none (a switch: true/false). An option someone adds to
`watch` has a key at once, with nothing to edit here.

Precedence: built-in defaults < the file < the command line (an option given on the command
line replaces the file's value, a list included).

Which file: `--config FILE`; else $PROCSENTRY_CONFIG (empty: no file); else
/etc/procsentry/procsentry.toml when it exists. A file that was named and cannot be read, is not
TOML, has an unknown key or a value of the wrong type is a usage error (one line naming the key
and its line, exit 2): a mistyped key must never silently leave a default in force.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

from monitor.trusted import Untrusted, check_ancestors, read_trusted

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (Ubuntu 22.04)
    import tomli as tomllib

DEFAULT_PATH = "/etc/procsentry/procsentry.toml"
ENV = "PROCSENTRY_CONFIG"

# Options that are about this invocation, not about the agent: never keys of the file.
NOT_KEYS = frozenset({"help", "config", "dump_bpf", "record"})

# What `config default` sets for an installed host agent (make install writes that file):
# events to a bounded file under the log directory the unit makes writable. Each is used only
# when `watch` has that option.
AGENT_SETTINGS: dict[str, Any] = {
    "output": "/var/log/procsentry/events.jsonl",
    "format": "json",
    "max_size": "100m",
    "max_backups": 5,
    "stats_interval": 15.0,  # metrics and `procsentry status` are as fresh as the last stats
}


class ConfigError(Exception):
    """One line: the file, the key and its line, and what is wrong."""


@dataclass(frozen=True)
class Key:
    """One key of the file: an option of `watch`."""

    name: str
    action: argparse.Action

    @property
    def switch(self) -> bool:  # store_true / store_false / store_const: a boolean in the file
        return self.action.nargs == 0

    @property
    def is_list(self) -> bool:
        return isinstance(self.action, argparse._AppendAction)

    @property
    def flag(self) -> str:
        return max(self.action.option_strings, key=len)

    @property
    def default(self) -> Any:
        return self.action.default


def keys(watch: argparse.ArgumentParser) -> dict[str, Key]:
    """Every key of the file, from the `watch` parser's actions."""
    out = {}
    for a in watch._actions:
        if not a.option_strings or a.dest in NOT_KEYS or a.help == argparse.SUPPRESS:
            continue
        out[a.dest] = Key(a.dest, a)
    return out


def watch_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices["watch"]
    raise LookupError("the parser has no watch command")


# -- reading -----------------------------------------------------------------------------------
def _line_of(text: str, key: str) -> int | None:
    """The line where key is set at the top level (tomllib does not report positions)."""
    name = r'(?:"%s"|\'%s\'|%s)' % ((re.escape(key),) * 3)
    pat = re.compile(r'^\s*%s\s*=' % name)
    table = re.compile(r'^\s*\[\[?\s*%s\s*[\].]' % name)
    for n, line in enumerate(text.splitlines(), 1):
        if table.match(line):
            return n
        if line.lstrip().startswith("["):
            return None  # another table: top-level keys come before the first one
        if pat.match(line):
            return n
    return None


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


_NUMBER = re.compile(r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")


def _convert_one(k: Key, value: Any) -> Any:
    """One scalar from the file, converted by the option's own type function."""
    tp = k.action.type
    if isinstance(value, bool) or isinstance(value, (list, dict)) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected {_expected(k)}, not {_kind(value)}")
    if tp is None or tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, not {_kind(value)}")
        v = value
    elif tp is int:
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, not {_kind(value)}")
        v = value
    elif tp is float:
        if not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, not {_kind(value)}")
        v = float(value)
    else:
        # The option's own type function, given the text the command line would give it.
        try:
            v = tp(str(value))
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None
        except (ValueError, TypeError):
            raise ValueError(f"invalid value {value!r}") from None
        # A number in quotes for an option whose value is a number is the wrong type.
        if isinstance(value, str) and isinstance(v, (int, float)) and _NUMBER.match(value):
            raise ValueError(f"expected a number, not a string (write {value.strip()} without quotes)")
        if isinstance(value, (int, float)) and not isinstance(v, (int, float)):
            raise ValueError(f"expected a string, not {_kind(value)}")
    if k.action.choices is not None and v not in k.action.choices:
        raise ValueError(f"{v!r} is not one of {', '.join(map(str, k.action.choices))}")
    return v


def _expected(k: Key) -> str:
    if k.switch:
        return "a boolean"
    if k.action.type is int:
        return "an integer"
    if k.action.type is float:
        return "a number"
    return "a string" if k.action.type in (None, str) else "a value"


def convert(k: Key, value: Any) -> Any:
    """A value from the file -> what argparse would have stored for that option."""
    if k.switch:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, not {_kind(value)}")
        # store_true stores const (True) when given; false means "not given": the default.
        return k.action.const if value else k.default
    if k.is_list:
        if not isinstance(value, list):
            raise ValueError(f"expected an array, e.g. {k.name} = [{json.dumps(str(value))}], not {_kind(value)}")
        return [_convert_one(k, v) for v in value]
    return _convert_one(k, value)


MAX_BYTES = 1 << 20  # a settings file is a few KiB; anything near this is not one


def _read_checked(path: str) -> bytes:
    """The file's bytes, once it is known to be a file a root daemon may take settings from
    (monitor/trusted.py): it tells the daemon where to write, so one that someone else can
    change would let them choose (an output file, a rules path)."""
    try:
        check_ancestors(path)
        return read_trusted(path, MAX_BYTES)
    except Untrusted as e:
        raise ConfigError(str(e)) from None


def load(path: str, watch: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's settings, converted: {dest: value}. Raises ConfigError (one line)."""
    raw = _read_checked(path)
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not TOML: not UTF-8 at byte {e.start}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not TOML: {e}") from None
    known = keys(watch)
    out: dict[str, Any] = {}
    for name, value in data.items():
        line = _line_of(text, name)
        where = f"{path}:{line}" if line else path
        k = known.get(name)
        if k is None:
            near = [n for n in known if n.replace("_", "") == name.replace("-", "").replace("_", "")]
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"{where}: unknown key {name!r}{hint}")
        try:
            out[name] = convert(k, value)
        except ValueError as e:
            raise ConfigError(f"{where}: {name}: {e}") from None
    return out


def chosen_path(cli_path: str | None) -> tuple[str | None, bool]:
    """(the file to read, whether it must exist)."""
    if cli_path:
        return cli_path, True
    env = os.environ.get(ENV)
    if env is not None:
        return (env or None), bool(env)
    return DEFAULT_PATH, False


def given_on_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dests of the options the command line gave (parsed again with every default
    suppressed, so only what was given lands in the namespace)."""
    saved = []
    stack = [parser]
    while stack:
        p = stack.pop()
        for a in p._actions:
            saved.append((a, a.default))
            if not isinstance(a, argparse._SubParsersAction):
                a.default = argparse.SUPPRESS
            else:
                stack.extend(a.choices.values())
        saved.append((p, dict(p._defaults)))
        p._defaults.clear()
    try:
        ns = parser.parse_args(argv)
    finally:
        for obj, d in saved:
            if isinstance(obj, argparse.ArgumentParser):
                obj._defaults.update(d)
            else:
                obj.default = d
    return set(vars(ns))


def apply(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> None:
    """Merge the configuration file into parsed `watch` arguments (the command line wins).
    Sets args.config to the file used (None without one). Raises ConfigError."""
    path, required = chosen_path(getattr(args, "config", None))
    args.config = None
    if path is None or (not required and not os.path.exists(path)):
        return
    w = watch_parser(parser)
    settings = load(path, w)
    given = given_on_command_line(parser, argv)
    for name, value in settings.items():
        if name not in given:
            setattr(args, name, value)
    args.config = path


# -- showing -----------------------------------------------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, (set, frozenset)):
        return json.dumps(",".join(sorted(v)))
    return json.dumps(str(v))


def effective(watch: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The settings in force, every key, as TOML-ready values (None where unset)."""
    out = {}
    for name in keys(watch):
        v = getattr(args, name, None)
        if isinstance(v, (set, frozenset)):
            v = ",".join(sorted(v))
        out[name] = v
    return out


def render_effective(watch: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    lines = []
    for name, v in effective(watch, args).items():
        lines.append(f"# {name} is not set" if v is None else f"{name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def settings_hash(watch: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """A short digest of the effective settings: the same settings give the same hash."""
    blob = json.dumps(effective(watch, args), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _help(a: argparse.Action) -> str:
    h = a.help or ""
    if "%(" in h:
        try:
            h = h % {**vars(a), "prog": "procsentry watch", "default": a.default}
        except (KeyError, TypeError, ValueError):
            pass
    return " ".join(h.split())


def render_default(watch: argparse.ArgumentParser) -> str:
    """The commented default file: every key with its help text and built-in default; the
    settings of an installed host agent (AGENT_SETTINGS) are the only ones set."""
    out = ["# procsentry configuration (TOML), read by `procsentry watch` from",
           f"# {DEFAULT_PATH} or the file given with --config.",
           "# Every key is a `procsentry watch` option (--sweep-interval is sweep_interval);",
           "# an option given on the command line overrides the file. Unknown keys and values of",
           "# the wrong type are errors. Check a file with `procsentry config check FILE`.",
           "# Generated by `procsentry config default`.", ""]
    for name, k in keys(watch).items():
        helptext = _help(k.action)
        flag = k.flag
        if k.action.metavar:
            flag += f" {k.action.metavar}"
        out.extend(textwrap.wrap(f"{flag}{': ' + helptext if helptext else ''}", 96,
                                 initial_indent="# ", subsequent_indent="#   "))
        if k.action.choices is not None:
            out.append(f"#   one of: {', '.join(map(str, k.action.choices))}")
        if name in AGENT_SETTINGS:
            v = AGENT_SETTINGS[name]
            value = [v] if k.is_list and not isinstance(v, list) else v
            out.append(f"{name} = {_toml_value(value)}")
        elif k.switch:
            out.append(f"#{name} = {_toml_value(bool(k.default))}")
        elif k.default is None:
            out.append(f"#{name} =    (not set by default)")
        else:
            out.append(f"#{name} = {_toml_value(k.default)}")
        out.append("")
    return "\n".join(out)

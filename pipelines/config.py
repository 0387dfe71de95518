"""Strict, layered configuration: dataclass defaults <- YAML file <- ``key.sub=value`` overrides.

Every component owns a small typed dataclass beside it (``ViewPolicy`` in ``radio/views.py``,
``StudentConfig`` in ``radio/student.py``, ...); the jobs in ``pipelines/`` compose them into one tree.
This module is the only place that reads YAML. It fails before any work starts on:

- an unknown key (the message names the key, where it came from, and the nearest valid key);
- a value of the wrong type (named the same way);
- a required value that no layer set.

``dump_config`` gives plain YAML-able data; ``load_config(cls, file_of_that_dump)`` rebuilds an equal
object, so the resolved config saved next to every run and every cache can be reloaded as it was.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

__all__ = [
    "ConfigError",
    "SettingError",
    "DiskFull",
    "disk_full",
    "job_config",
    "nearest_hint",
    "split_config_args",
    "require",
    "check_output_dir",
    "load_config",
    "dump_config",
    "config_to_yaml",
    "flatten_config",
    "parse_override",
]

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A configuration problem, raised before any work starts. The message says what and where."""


class SettingError(ConfigError):
    """One setting's value is out of range. ``key`` is its dotted path from the job config's root, so
    ``load_config(..., validate=...)`` can say whether the file or an override set it."""

    def __init__(self, key: str, message: str, also: tuple[str, ...] = ()):
        super().__init__(message)
        self.key, self.keys = key, (key, *also)


class DiskFull(OSError):
    """No space left where a job writes; the message names the place and what was kept."""


_FULL_MARKERS = ("No space left on device", "os error 28", "[Errno 28]", "Disk quota exceeded", "[Errno 122]")


def disk_full(e: BaseException, where: str | os.PathLike | None = None) -> str | None:
    """The no-space error inside ``e`` (its causes, a Ray task's cause, or a message from C++/Rust writers
    that lost the errno), as text; None when ``e`` is something else. ``where``: the local folder being
    written; a writer whose message lost the cause (torch's zip writer: "iostream error") is taken to have
    hit a full disk when that file system has almost nothing left."""
    first, seen = e, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (28, 122):
            return f"{e.strerror}: {e.filename}" if e.filename else str(e)
        text = str(e)
        if any(m in text for m in _FULL_MARKERS):
            return next(line for line in text.splitlines() if any(m in line for m in _FULL_MARKERS)).strip()[:300]
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__  # ray.exceptions.RayTaskError keeps .cause
    if where is not None and isinstance(first, (OSError, RuntimeError)) and "://" not in str(where):
        import shutil

        p = Path(where)
        while not p.exists() and p != p.parent:
            p = p.parent
        free = shutil.disk_usage(p).free
        if free < 64 * 2**20:
            return (
                f"{type(first).__name__} while writing, with {free / 2**20:.1f} MiB left on the file system of {where}"
            )
    return None


def require(ok: bool, key: str, value: Any, allowed: str, hint: str = "", also: tuple[str, ...] = ()):
    """Raise SettingError ``"<key> must be <allowed>, got <value>"`` unless ``ok``. ``also``: the other keys a
    cross-key rule reads, so the error names where each of them was set."""
    if not ok:
        raise SettingError(key, f"'{key}' must be {allowed}, got {value!r}{'. ' + hint if hint else ''}", also)


def check_output_dir(path: str, key: str = "output"):
    """Fail before any work when a local output location cannot be written: a file in the way, or a
    folder (or the nearest existing parent) that is not writable. Object-store URIs are not checked."""
    if "://" in str(path):
        return
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise SettingError(key, f"'{key}' is {path}, which is a file, not a folder: choose another {key}=")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise SettingError(key, f"'{key}' is {path}, but {probe} is a file, not a folder: choose another {key}=")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SettingError(
            key, f"'{key}' is {path}, but {probe} is not writable: choose another {key}= or fix its permissions"
        )


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return True, (args[0] if len(args) == 1 else Union[tuple(args)])  # noqa: UP007 (built at run time from a tuple)
    return False, tp


def nearest_hint(key: str, valid: list[str]) -> str:
    m = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if m:
        return f" Did you mean '{m[0]}'?"
    return f" Valid keys here: {', '.join(sorted(valid))}." if valid else ""


def _type_name(tp) -> str:
    """How a type reads in an error: `an integer or 'native'`, not `Union`."""
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    return str(tp).replace("typing.", "") if origin is not None else getattr(tp, "__name__", None) or str(tp)


def _coerce(value: Any, tp, path: str, origins: str | dict) -> Any:
    """Convert a YAML value to ``tp`` or raise ConfigError naming ``path`` and where it was set."""
    origin = _origin_of(origins, path)

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{origin}: '{path}' must be {expected}, got {value!r} ({type(value).__name__})")

    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise bad(_type_name(tp))
    tp = inner
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad(f"a mapping of {tp.__name__} fields")
        return _build(tp, value, path, origins)
    origin_tp = get_origin(tp)
    if origin_tp is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{origin}: '{path}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin_tp in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, path, origins)
            except ConfigError:
                continue
        raise bad(_type_name(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a revision or an id that YAML read as a number
        raise bad("a string")
    if origin_tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad(f"a list ({_type_name(tp)})")
        args = get_args(tp)
        if origin_tp is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad(f"a list of {len(args)} items")
            return tuple(
                _coerce(v, a, f"{path}[{i}]", origins) for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]", origins) for i, v in enumerate(value)]
        return tuple(items) if origin_tp is tuple else items
    if origin_tp is dict:
        key_tp, val_tp = get_args(tp) or (str, Any)
        if isinstance(value, (list, tuple)) and dataclasses.is_dataclass(val_tp):
            # `teachers=[tiny-clip,tiny-sam]`: a list of names, each entry with its defaults.
            value = {str(k): {} for k in value}
        if not isinstance(value, dict):
            raise bad(f"a mapping ({_type_name(tp)})")
        return {
            _coerce(k, key_tp, path, origins): _coerce(
                v if v is not None or not dataclasses.is_dataclass(val_tp) else {}, val_tp, f"{path}.{k}", origins
            )
            for k, v in value.items()
        }
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad(_type_name(tp))


def _build(cls, data: dict, path: str, origin: str | dict):
    """Instantiate dataclass ``cls`` from a (possibly partial) mapping, strictly."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            where = _origin_of(origin, f"{prefix}{key}")
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'.{nearest_hint(str(key), list(fields))}")
    kwargs = {}
    for name, f in fields.items():
        full = f"{prefix}{name}"
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], full, origin)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise ConfigError(
                f"missing required value '{full}': set it in the config file or on the command line as {full}=..."
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        key = _key_named(e, path, list(fields))
        raise ConfigError(
            f"{_origin_of(origin, key)}: {e}"
            if key != path
            else f"{_origin_of(origin, key)}: invalid '{path or cls.__name__}': {e}"
        ) from None


def _key_named(e: Exception, path: str, fields: list[str]) -> str:
    """The dotted key an error from ``__post_init__`` is about: its SettingError key, else the first
    field the message names, else the dataclass's own path."""
    prefix = f"{path}." if path else ""
    if isinstance(e, SettingError):
        return e.key if e.key.startswith(prefix) else prefix + e.key
    text = str(e)
    found = []  # (position of the first mention, -len): the field named first is the one the message is about
    for name in fields:
        m = re.search(rf"(^|[^\w.])({re.escape(prefix + name)}|{re.escape(name)})\b", text)
        if m:
            found.append((m.start(2), -len(name), name))
    return prefix + min(found)[2] if found else path


def _origin_of(origin, path: str) -> str:
    if isinstance(origin, str):
        return origin
    # Longest recorded prefix wins: an override of `a.b` explains an error in `a.b.c` and in `a.b[2]`.
    parts = re.sub(r"\[\d+\]", "", path).split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in origin:
            return origin[key]
    return origin.get("", "defaults")


def dump_config(obj) -> Any:
    """A dataclass tree as plain YAML/JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump_config(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, dict):
        return {str(k): dump_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [dump_config(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_to_yaml(obj) -> str:
    return yaml.safe_dump(dump_config(obj), sort_keys=False, default_flow_style=None)


def flatten_config(obj, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf, e.g. for MLflow params."""
    data = dump_config(obj) if not isinstance(obj, dict) else obj
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_config(v, f"{key}."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003). The value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e})") from None
    return key.split("."), value


def _merge_file_layer(cls, base: dict, layer: dict, path: str, origin: dict, source: str):
    """Deep-merge ``layer`` into ``base`` for dataclass ``cls``, checking keys against its fields."""
    hints = _hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key, value in layer.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{full}'.{nearest_hint(str(key), list(fields))}")
        origin[full] = source
        _, tp = _is_optional(hints[key])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_file_layer(tp, base[key], value, full, origin, source)
        else:
            # Scalars, lists and dict-of-entries (e.g. `teachers`) are replaced whole by a file layer,
            # so a file can remove a default teacher by not listing it.
            base[key] = value


def _apply_override(cls, base: dict, keys: list[str], value: Any, origin: dict, source: str):
    """Set ``keys`` (a dotted path) to ``value`` in the data tree ``base`` of dataclass ``cls``."""
    tp, node = cls, base
    for i, key in enumerate(keys):
        full = ".".join(keys[: i + 1])
        if dataclasses.is_dataclass(tp):
            fields = {f.name for f in dataclasses.fields(tp) if f.init}
            if key not in fields:
                raise ConfigError(f"{source}: unknown key '{full}'.{nearest_hint(key, list(fields))}")
            child_tp = _is_optional(_hints(tp)[key])[1]
        elif get_origin(tp) is dict:
            child_tp = get_args(tp)[1] if get_args(tp) else Any  # any key: an entry such as a teacher name
        else:
            parent = ".".join(keys[:i])
            raise ConfigError(f"{source}: '{parent}' is a {_type_name(tp)}, it has no key '{key}'")
        if i == len(keys) - 1:
            node[key] = value
            origin[full] = source
            return
        child = node.get(key)
        if isinstance(child, (list, tuple)) and get_origin(child_tp) is dict:
            child = {str(k): {} for k in child}  # `teachers=[a,b]` then `teachers.a.actors=2`
        if not isinstance(child, dict):
            child = {}
        node[key] = child
        tp, node = child_tp, child


def _origins_of(origin: dict, keys: tuple[str, ...]) -> str:
    """Where the keys of one rule were set: each layer once, the file or overrides before the defaults."""
    found = list(dict.fromkeys(_origin_of(origin, k) for k in keys))
    set_by_user = [o for o in found if o != "defaults"]
    return " and ".join(set_by_user) if set_by_user else "defaults"


def split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG] [key=value ...]`` -> (the config file or None, the overrides)."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def job_config(argv: list[str], cls, usage: str, validate=None):
    """A job's resolved and validated config from ``[CONFIG] [key=value ...]``; None after printing
    ``usage`` for -h. Range errors name the key, its value and whether the file or an override set it."""
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return None
    path, overrides = split_config_args(argv)
    return load_config(cls, path, overrides, validate=validate)


def load_config(
    cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *, base: Any = None, validate=None
):
    """Resolve a config of dataclass type ``cls``.

    Layers, later wins: ``cls()`` defaults (or ``base``, an instance) <- the YAML file at ``path`` <-
    ``overrides`` such as ``["train.lr=3e-4", "teachers.tiny-sam.actors=2"]``.
    Raises ConfigError naming the key and its source on any unknown key, wrong type or missing value.
    ``validate(cfg)``: the job's range checks; a SettingError it raises is prefixed with where the key's
    value came from (the file, an override, or the defaults).
    """
    if base is None:
        try:
            base = cls()
        except TypeError:
            base = None  # required fields without defaults: only the layers can provide them
    data = dump_config(base) if base is not None else {}
    origin: dict[str, str] = {"": "defaults"}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            layer = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a text file (a YAML config is UTF-8 text)") from None
        if not isinstance(layer, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(layer).__name__}")
        _merge_file_layer(cls, data, layer, "", origin, str(p))
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(cls, data, keys, value, origin, f"override '{text}'")
    cfg = _build(cls, data, "", origin)
    if validate is not None:
        try:
            validate(cfg)
        except SettingError as e:
            raise ConfigError(f"{_origins_of(origin, e.keys)}: {e}") from None
    return cfg

"""Frozen, versioned stage configs with a registry and a strict dict/YAML round-trip.

Every stage takes one config::

    @register_config("eval")
    @dataclass(frozen=True, kw_only=True)
    class EvalConfig(StageConfig):
        window: int = 512

    cfg = EvalConfig(window=256)
    assert config_from_dict(cfg.to_dict()) == cfg

``to_dict`` writes ``type`` and ``version`` beside the fields; ``from_dict`` rejects unknown keys
(suggesting the closest valid one), wrong types and versions newer than this code knows. Runtime state
(Hessians, statistics, buffers) never lives on a config, so one config can be reused.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import ConfigError
from .finite import require_finite, require_finite_tree

C = TypeVar("C", bound="StageConfig")

_REGISTRY: dict[str, type[StageConfig]] = {}


def register_config(kind: str):
    """Class decorator: register a config class under ``kind`` (the ``type`` key of its dict form)."""

    def deco(cls: type[C]) -> type[C]:
        if kind in _REGISTRY and _REGISTRY[kind] is not cls:
            raise ValueError(f"config kind {kind!r} registered twice")
        cls.KIND = kind
        _REGISTRY[kind] = cls
        return cls

    return deco


def registered_configs() -> dict[str, type[StageConfig]]:
    return dict(_REGISTRY)


def suggest(name: str, options) -> str:
    """' (did you mean X?)' for the closest option, or ''."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Base of every stage config. Subclasses are frozen dataclasses with defaults on every field."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    # fields naming data files (text, tasks): their bytes go into the content id (compress.content), so
    # a calibration text edited in place re-runs the stage
    DATA_FIELDS: ClassVar[tuple[str, ...]] = ()
    version: int = 0  # 0 means "current"; replaced in __post_init__

    def __post_init__(self) -> None:
        if self.version == 0:
            object.__setattr__(self, "version", type(self).VERSION)
        if self.version > type(self).VERSION:
            raise ConfigError(
                f"{self.KIND}.version: {self.version} is newer than this compress understands "
                f"(<= {type(self).VERSION}); upgrade compress"
            )
        # every float field of every stage, once, here: NaN passes every `x > 0` test a validate() writes
        for f in dataclasses.fields(self):
            require_finite_tree(getattr(self, f.name), f"{self.KIND}.{f.name}", ConfigError)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field when a value is out of range. Override per stage."""

    def require_at_least(self, minimum: int, *names: str, note: str = "") -> None:
        """ConfigError naming the first field of ``names`` below ``minimum`` (None: not set, passes), the
        check most validate() methods start with; ``note`` says what the boundary value means.

            self.require_at_least(1, "samples", "seq_len")       # quantize.samples: 0 must be >= 1
        """
        for name in names:
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ConfigError(f"{self.KIND}.{name}: {value} must be >= {minimum}{note}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.KIND}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "") -> C:
        where = where or cls.KIND
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("type", cls.KIND)
        if kind != cls.KIND:
            raise ConfigError(f"{where}.type: {kind!r} is not {cls.KIND!r}")
        version = data.get("version", cls.VERSION)
        if isinstance(version, int) and version < cls.VERSION:
            data = cls.migrate(data, version)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"{where}: unknown key {key!r}{suggest(key, names)}; valid keys: {', '.join(sorted(names))}"
                )
        kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def migrate(cls, data: dict[str, Any], from_version: int) -> dict[str, Any]:
        """Turn the dict of an older version into the current one. Override when VERSION grows."""
        data["version"] = cls.VERSION
        return data

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_from_dict(data: dict[str, Any], *, where: str = "config") -> StageConfig:
    """Build whichever registered config ``data['type']`` names."""
    if not isinstance(data, dict) or "type" not in data:
        raise ConfigError(f"{where}: missing 'type' (one of: {', '.join(sorted(_REGISTRY))})")
    kind = data["type"]
    if kind not in _REGISTRY:
        raise ConfigError(
            f"{where}.type: unknown stage {kind!r}{suggest(kind, _REGISTRY)}; known: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[kind].from_dict(data, where=where)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"key {key!r} given twice (line {line})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently: a recipe with two `quantize:` sections planned only
    the second. Refused instead (merge keys `<<` still override, as YAML means them to)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark.line + 1)
                    seen.add(key)
                except TypeError:  # an unhashable key: the base constructor says so
                    pass
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: str | Path, what: str) -> Any:
    """Parse a YAML (or JSON) file a user gave us; every way it can be unreadable is one ConfigError line."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, expected a {what}")
    if not p.is_file():
        raise ConfigError(f"{p}: {what} does not exist")
    try:
        return yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"{p}: {e}; a {what} gives each key once") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (not UTF-8)") from None


def load_config_file(path: str | Path, expect: type[C] | None = None) -> C | StageConfig:
    """Read a YAML/JSON config file; with ``expect``, the file may omit ``type``."""
    p = Path(path)
    data = read_yaml_file(p, "config file")
    if data is None:
        raise ConfigError(f"{p}: config file is empty")
    if expect is not None:
        return expect.from_dict(data, where=str(p))
    return config_from_dict(data, where=str(p))


def _plain(value: Any) -> Any:
    if isinstance(value, StageConfig):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples; raise ConfigError otherwise."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}{suggest(value, args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and issubclass(hint, StageConfig):
        return value if isinstance(value, hint) else hint.from_dict(value, where=where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return require_finite(float(value), where, ConfigError)  # YAML's .nan/.inf name the file here
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value

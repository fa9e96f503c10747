"""Guard tests for stage configs: every registered config round-trips; bad input names the field."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import yaml

import compress
from compress.config import config_from_dict, load_config_file, registered_configs
from compress.errors import ConfigError
from compress.evaluate import EvalConfig


def _import_all_stages() -> dict:
    """Import every compress module so that every config registers itself, then list them."""
    for mod in pkgutil.walk_packages(compress.__path__, "compress."):
        if mod.name != "compress.__main__":
            importlib.import_module(mod.name)
    return registered_configs()


CONFIGS = _import_all_stages()


def test_eval_and_fetch_configs_are_registered():
    assert {"eval", "fetch"} <= set(CONFIGS)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_registered_config_round_trips_through_dict(kind):
    cls = CONFIGS[kind]
    cfg = cls()
    d = cfg.to_dict()
    assert d["type"] == kind
    assert d["version"] == cls.VERSION
    assert config_from_dict(d) == cfg
    assert cls.from_dict(d) == cfg


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_registered_config_round_trips_through_yaml(kind, tmp_path):
    cfg = CONFIGS[kind]()
    text = cfg.to_yaml()
    assert config_from_dict(yaml.safe_load(text)) == cfg
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    assert load_config_file(path) == cfg
    assert load_config_file(path, CONFIGS[kind]) == cfg


def test_non_default_eval_config_round_trips_through_yaml():
    cfg = EvalConfig(data="moby-dick-calib", window=256, stride=128, max_tokens=1000,
                     tasks=("anachronisms", "emoji_movie"), mc_limit=7, threads=1)
    back = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert back == cfg
    assert back.tasks == ("anachronisms", "emoji_movie")  # lists come back as tuples


def test_unknown_config_key_suggests_closest():
    d = EvalConfig().to_dict()
    d["windw"] = 256
    with pytest.raises(ConfigError) as e:
        config_from_dict(d)
    msg = str(e.value)
    assert "'windw'" in msg
    assert "did you mean 'window'" in msg


def test_unknown_config_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text("max_tokns: 100\n")
    with pytest.raises(ConfigError) as e:
        load_config_file(path, EvalConfig)
    assert str(path) in str(e.value)
    assert "'max_tokns'" in str(e.value) and "did you mean 'max_tokens'" in str(e.value)


def test_unknown_stage_type_suggests_closest():
    with pytest.raises(ConfigError, match=r"'evl'.*did you mean 'eval'"):
        config_from_dict({"type": "evl"})


def test_missing_type_is_refused():
    with pytest.raises(ConfigError, match="missing 'type'"):
        config_from_dict({"window": 3})


@pytest.mark.parametrize("field, value", [("window", "big"), ("window", 2.5), ("window", True),
                                          ("tasks", "sports_understanding"), ("data", 3)])
def test_wrong_type_names_the_field(field, value):
    d = EvalConfig().to_dict()
    d[field] = value
    with pytest.raises(ConfigError) as e:
        EvalConfig.from_dict(d)
    assert f"eval.{field}:" in str(e.value)
    assert repr(value) in str(e.value)


def test_wrong_type_inside_list_names_the_element():
    d = EvalConfig().to_dict()
    d["tasks"] = ["sports_understanding", 7]
    with pytest.raises(ConfigError, match=r"config\.tasks\[1\]: expected a string"):
        config_from_dict(d)  # the generic entry point prefixes fields with "config"


def test_out_of_range_value_names_the_field():
    with pytest.raises(ConfigError, match=r"eval\.stride"):
        EvalConfig(window=128, stride=256)
    with pytest.raises(ConfigError, match=r"eval\.mc_limit"):
        config_from_dict({**EvalConfig().to_dict(), "mc_limit": -1})


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_newer_config_version_is_refused(kind):
    cls = CONFIGS[kind]
    d = cls().to_dict()
    d["version"] = cls.VERSION + 1
    with pytest.raises(ConfigError, match="newer"):
        config_from_dict(d)


def test_config_is_frozen_and_replace_returns_a_new_one():
    cfg = EvalConfig()
    with pytest.raises(Exception):
        cfg.window = 3  # type: ignore[misc]
    other = cfg.replace(window=256, stride=256)
    assert other.window == 256 and cfg.window == 512


def test_empty_and_invalid_config_files_are_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config_file(empty, EvalConfig)
    bad = tmp_path / "bad.yaml"
    bad.write_text("window: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(bad, EvalConfig)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.yaml", EvalConfig)

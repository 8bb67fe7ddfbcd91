"""Config: profiles, file, environment, keywords, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

import memcollect as mc
from memcollect.config import load_config


def test_defaults() -> None:
    config = load_config()
    assert config.profile == "default"
    assert config.durability == "spool"
    assert config.backend_url == "sqlite:///.memcollect/memories.db"


def test_load_order_profile_file_env_kwargs(tmp_path: Path) -> None:
    (tmp_path / "memcollect.toml").write_text(
        'profile = "production"\nbatch_size = 111\nbatch_timeout = 0.3\nmax_retries = 2\n'
    )
    env = {"MEMCOLLECT_BATCH_TIMEOUT": "0.4", "MEMCOLLECT_MAX_RETRIES": "3"}
    config = load_config(environ=env, cwd=tmp_path, max_retries=4)
    assert config.profile == "production"
    assert config.max_queue_size == 100_000  # from the profile
    assert config.batch_size == 111  # file beats profile
    assert config.batch_timeout == 0.4  # env beats file
    assert config.max_retries == 4  # keyword beats env


def test_pyproject_tool_section(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.memcollect]\nprofile = "low_resource"\n')
    config = load_config(environ={}, cwd=tmp_path)
    assert config.profile == "low_resource"
    assert config.max_queue_size == 2_000


def test_env_selects_the_profile() -> None:
    config = load_config(environ={"MEMCOLLECT_PROFILE": "high_performance"})
    assert config.batch_size == 2048


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "many"}, "batch_size"),
        ({"batch_timeout": -1}, "batch_timeout"),
        ({"durability": "paper"}, "durability"),
        ({"on_full": "explode"}, "on_full"),
        ({"profile": "turbo"}, "profile"),
        ({"retry_base": 5.0, "retry_max": 1.0}, "retry_max"),
        ({"batch_sise": 10}, "batch_sise"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(mc.ConfigError, match=field):
        load_config(environ={}, **kwargs)


def test_invalid_env_value_names_the_field() -> None:
    with pytest.raises(mc.ConfigError, match="batch_size"):
        load_config(environ={"MEMCOLLECT_BATCH_SIZE": "lots"})


def test_direct_construction_is_validated() -> None:
    with pytest.raises(mc.ConfigError, match="max_queue_size"):
        mc.Config(max_queue_size=-5)


def test_collector_takes_a_url_a_config_or_keywords(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    with mc.MemoryCollector(url, durability="memory") as c:
        assert c.backend.url == url
    with mc.MemoryCollector(mc.Config(backend="memory://", durability="memory")) as c:
        assert c.backend.url == "memory://"
    with pytest.raises(mc.ValidationError, match="not supported"):
        mc.MemoryCollector("nosuch://x", durability="memory")


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("batchsize = 1\n", "did you mean 'batch_size'?"),
        ("[tool.memcollect]\nbatch_size = 1\n", "[tool.memcollect] is for pyproject.toml"),
        ("zzz = 1\n", "the fields are backend, profile"),
    ],
)
def test_an_unknown_field_says_what_to_write(tmp_path: Path, text: str, hint: str) -> None:
    (tmp_path / "memcollect.toml").write_text(text)
    with pytest.raises(mc.ConfigError) as info:
        load_config(environ={}, cwd=tmp_path)
    assert hint in str(info.value)
    with pytest.raises(mc.ConfigError, match="did you mean 'batch_size'"):
        load_config(environ={}, cwd=tmp_path / "none", bacth_size=5)

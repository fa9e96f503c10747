"""Device profiles: shipped YAML files, user files, $COMPRESS_PROFILES, thread clamping, budget verdicts."""

from __future__ import annotations

import pytest

from compress.errors import ConfigError
from compress.harness.profiles import effective_threads, list_profiles, load_profile, verdicts


def test_shipped_profiles_load_with_their_budgets():
    assert {"laptop", "phone", "phone-lowend"} <= set(list_profiles())
    phone = load_profile("phone")
    assert (phone.name, phone.threads, phone.memory_budget_mb, phone.storage_budget_mb) == ("phone", 4, 3072, 1024)
    low = load_profile("phone-lowend")
    assert (low.threads, low.memory_budget_mb) == (2, 1536)
    assert load_profile("laptop").storage_budget_mb is None


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'phon'.*did you mean 'phone'.*laptop.*phone-lowend"):
        load_profile("phon")


def test_user_profile_file_and_directory(tmp_path, monkeypatch):
    f = tmp_path / "tablet.yaml"
    f.write_text("name: tablet\nthreads: 3\nmemory_budget_mb: 4096\nstorage_budget_mb: 2048\n")
    assert load_profile(str(f)).threads == 3
    monkeypatch.setenv("COMPRESS_PROFILES", str(tmp_path))
    assert "tablet" in list_profiles() and load_profile("tablet").memory_budget_mb == 4096


@pytest.mark.parametrize("text, match", [("threads: 0\n", "threads must be a positive integer"),
                                         ("thread: 2\n", "unknown key 'thread'.*did you mean 'threads'"),
                                         ("memory_budget_mb: -1\n", "memory_budget_mb must be a positive"),
                                         ("[1, 2]\n", "a profile is a mapping"),
                                         ("threads: [\n", "not valid YAML")])
def test_bad_profile_files_name_the_file_and_field(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_profile(f)
    assert str(f) in str(e.value)


def test_missing_profile_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(tmp_path / "nope.yaml")


def test_threads_are_clamped_to_the_cores_and_the_row_says_so(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    used, note = effective_threads(load_profile("phone"))
    assert used.threads == 2 and "asks for 4 threads" in note and "ran 2" in note
    same, none = effective_threads(load_profile("laptop"))
    assert same.threads == 2 and none == ""


def test_budget_verdicts():
    phone = load_profile("phone-lowend")  # 1536 MB memory, 300 MB storage
    assert verdicts(phone, 250.0, 1000.0) == {"fits_storage": True, "fits_memory": True}
    assert verdicts(phone, 301.0, 1600.0) == {"fits_storage": False, "fits_memory": False}
    assert verdicts(load_profile("laptop"), 5000.0, None) == {"fits_storage": None, "fits_memory": None}


def test_profiles_command_lists_them(run_cli):
    rc, out, err = run_cli("profiles")
    assert rc == 0 and "phone-lowend" in out and "3072" in out


def test_bench_with_unknown_profile_is_one_line_exit_2(run_cli, tmp_path):
    rc, out, err = run_cli("bench", "smollm2-135m", "--profile", "watch", "--out", tmp_path / "r")
    assert rc == 2 and "unknown profile 'watch'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()

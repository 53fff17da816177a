import pytest

from mmbatch import config
from mmbatch.identity import env_of, job_key_from, job_settings, sanitize_component, store_namespace


def cfg(**checkpoint):
    c = config.Config()
    for k, v in checkpoint.items():
        setattr(c.checkpoint, k, v)
    return c


@pytest.mark.parametrize("env,name,key", [
    ({}, "", None),
    ({"AWS_BATCH_JOB_ID": "abc-123"}, "", "abc-123"),
    ({"AWS_BATCH_JOB_ID": "abc", "AWS_BATCH_JOB_ARRAY_INDEX": "7"}, "", "abc_7"),
    ({"AWS_BATCH_JOB_ID": "abc:7", "AWS_BATCH_JOB_ARRAY_INDEX": "7"}, "", None),  # index already in the id
    ({"AWS_BATCH_JOB_ID": "abc"}, "main", "abc_main"),
    ({"MMBATCH_JOB_KEY": "my-job"}, "", "my-job"),
    ({"AWS_BATCH_JOB_ID": "abc", "AWS_BATCH_JOB_ATTEMPT": "3"}, "", "abc"),
])
def test_job_key(env, name, key):
    got = job_key_from(env, name)
    if key is None and env.get("AWS_BATCH_JOB_ID", "").endswith(":7"):
        assert got is not None and got.startswith("abc_7-")  # ':' sanitized, hash appended
    else:
        assert got == key


@pytest.mark.parametrize("raw", ["../x", "/abs/path", "a/../../b", "..", ".", "x" * 5000, "ünï/cødé", "a\nb",
                                 "-rf", "_x", "a b", "\x00nul"])
def test_sanitized_keys_are_single_safe_components(raw):
    key = sanitize_component(raw)
    assert key and "/" not in key and key not in (".", "..") and len(key) <= 200
    assert key[0].isalnum()
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in key)


def test_sanitizing_never_merges_distinct_ids():
    assert sanitize_component("a/b") != sanitize_component("a_b")
    assert sanitize_component("x" * 300) != sanitize_component("x" * 301)
    assert sanitize_component("plain-id_1.2") == "plain-id_1.2"


def test_env_of_later_entries_win():
    spec = {"process": {"env": ["A=1", "B=2", "A=3", "junk", 5, "=x"]}}
    assert env_of(spec) == {"A": "3", "B": "2"}


def test_settings_managed_and_mode_none():
    s = job_settings({"AWS_BATCH_JOB_ID": "j"}, cfg())
    assert s.managed and s.mode == "iterative" and s.interval == 900
    assert not job_settings({"AWS_BATCH_JOB_ID": "j", "MMBATCH_CHECKPOINT_MODE": "none"}, cfg()).managed
    assert not job_settings({"AWS_BATCH_JOB_ID": "j", "MMC_CHECKPOINT_MODE": "none"}, cfg()).managed
    assert not job_settings({"AWS_BATCH_JOB_ID": "j"}, cfg(mode="none")).managed
    # an explicit per-job mode beats the node's
    assert job_settings({"AWS_BATCH_JOB_ID": "j", "MMBATCH_CHECKPOINT_MODE": "iterative"}, cfg(mode="none")).managed
    assert not job_settings({}, cfg()).managed


def test_per_job_knobs_and_aliases():
    env = {"AWS_BATCH_JOB_ID": "j", "MMC_CHECKPOINT_INTERVAL": "30m", "MMC_CHECKPOINT_DIAGNOSIS": "yes"}
    s = job_settings(env, cfg())
    assert s.interval == 1800 and s.diagnosis and not s.warnings
    env["MMBATCH_CHECKPOINT_INTERVAL"] = "1h"  # ours wins over the alias
    assert job_settings(env, cfg()).interval == 3600


@pytest.mark.parametrize("knob,value", [("MMBATCH_CHECKPOINT_MODE", "sometimes"),
                                        ("MMBATCH_CHECKPOINT_INTERVAL", "soon"),
                                        ("MMBATCH_CHECKPOINT_INTERVAL", "1s"),
                                        ("MMBATCH_CHECKPOINT_DIAGNOSIS", "maybe"),
                                        ("MMBATCH_CHECKPOINT_IMAGE_PATH", "/etc")])
def test_bad_per_job_values_are_ignored_with_a_warning(knob, value):
    s = job_settings({"AWS_BATCH_JOB_ID": "j", knob: value}, cfg())
    assert s.managed and s.warnings and s.mode == "iterative" and s.interval == 900 and not s.image_path


def test_image_path_only_under_allowed_roots():
    c = cfg(allowed_image_paths=["/mnt/fsx"])
    ok = job_settings({"AWS_BATCH_JOB_ID": "j", "MMBATCH_CHECKPOINT_IMAGE_PATH": "/mnt/fsx/team/../team2"}, c)
    assert ok.image_path == "/mnt/fsx/team2" and not ok.warnings
    bad = job_settings({"AWS_BATCH_JOB_ID": "j", "MMBATCH_CHECKPOINT_IMAGE_PATH": "/mnt/fsx/../../etc"}, c)
    assert bad.image_path == "" and bad.warnings


def test_subpath_is_sanitized_into_the_namespace():
    s = job_settings({"AWS_BATCH_JOB_ID": "j", "MMBATCH_CHECKPOINT_IMAGE_SUBPATH": "../../team/run1"}, cfg())
    ns = store_namespace(s.job_key, s.image_subpath)
    assert "/" not in ns and ".." not in ns.split("_")

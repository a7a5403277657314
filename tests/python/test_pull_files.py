"""pull_files: SGLang's semantics (fnmatch allow/ignore patterns over the
model's files, relative paths kept) and refusal of hostile stored names, on
memory:// and on mooncake:// against a real master."""

from __future__ import annotations

import fnmatch
import json
import os
import threading
from pathlib import Path

import pytest

from mooncake_connector import (AbortedError, DataLossError, FailedPreconditionError,
                                create_remote_connector)

FILES = {
    "config.json": b'{"hidden_size": 64}',
    "generation_config.json": b'{"do_sample": false}',
    "tokenizer.json": b'{"version": "1.0"}',
    "tokenizer.model": bytes(range(256)) * 4,  # binary, not UTF-8
    "chat_template.jinja": "{{ messages }} — ünïcode".encode(),
    "sub/dir/preprocessor_config.json": b"{}",
}


def model_url(store_url: str, model: str) -> str:
    """`store_url` ("memory://NAME" or "mooncake://") with a model path."""
    return f"{store_url}/{model}"  # mooncake:///MODEL takes the master from the environment


@pytest.fixture
def model(store_url):
    """A connector on the model 'org/m' whose files are FILES, plus weights."""
    c = create_remote_connector(model_url(store_url, "org/m"))
    for rel, data in FILES.items():
        c.setbytes(f"org/m/files/{rel}", data)
    c.setbytes("org/m/files/model.safetensors", b"not really weights")
    c.setbytes("org/m/keys/rank_0/w", b"a weight")
    c.setbytes("org/other/files/config.json", b"another model")
    yield c
    c.close()


def pulled(c) -> dict[str, bytes]:
    root = Path(c.get_local_dir())
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sglang_config_pull(model):
    # What SGLang's ModelConfig does first.
    got = model.pull_files(allow_pattern=["*config.json"])
    assert sorted(got) == ["config.json", "generation_config.json", "sub/dir/preprocessor_config.json"]
    assert pulled(model) == {k: FILES[k] for k in got}


def test_sglang_tokenizer_pull_keeps_binary_files_and_paths(model):
    # What SGLang's config/tokenizer loading does next.
    model.pull_files(ignore_pattern=["*.pt", "*.safetensors", "*.bin"])
    assert pulled(model) == FILES


def test_no_patterns_pulls_every_file_and_nothing_else(model):
    model.pull_files()
    files = pulled(model)
    assert set(files) == set(FILES) | {"model.safetensors"}


def test_empty_allow_list_pulls_nothing(model):
    assert model.pull_files(allow_pattern=[]) == []
    assert pulled(model) == {}


@pytest.mark.parametrize("pattern", ["*.json", "config.json", "*/dir/*", "tokenizer.*", "[ct]*", "[!c]*",
                                     "*config*", "sub/*", "?onfig.json", "org/m/files/*.json"])
def test_patterns_match_like_python_fnmatch(model, pattern):
    prefix = "org/m/files/"
    keys = [prefix + rel for rel in list(FILES) + ["model.safetensors"]]
    expected = sorted(k[len(prefix):] for k in keys
                      if fnmatch.fnmatch(k, pattern) or fnmatch.fnmatch(k[len(prefix):], pattern))
    assert sorted(model.pull_files(allow_pattern=[pattern])) == expected


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/evil", "a//b", "./x", "sub/./x", "sub/.."])
def test_hostile_stored_names_are_refused_and_nothing_is_written(store_url, tmp_path, name):
    with create_remote_connector(model_url(store_url, "m")) as c:
        c.setbytes("m/files/good.json", b"{}")
        c.setbytes(f"m/files/{name}", b"pwned")
        root = Path(c.get_local_dir())
        before = set(os.listdir(root.parent))
        with pytest.raises(DataLossError, match="refusing to write outside"):
            c.pull_files()
        assert list(root.rglob("*")) == []
        assert set(os.listdir(root.parent)) == before
        assert not Path("/etc/evil").exists()
        # Filtered out, the hostile name does not stop the rest.
        assert c.pull_files(allow_pattern=["*good.json"]) == ["good.json"]


def test_symlink_planted_in_the_local_dir_is_not_followed(store_url, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    with create_remote_connector(model_url(store_url, "m")) as c:
        c.setbytes("m/files/sub/config.json", b"{}")
        c.setbytes("m/files/top.json", b"new")
        root = Path(c.get_local_dir())
        (root / "sub").symlink_to(outside, target_is_directory=True)
        (outside / "victim").write_bytes(b"keep me")
        (root / "top.json").symlink_to(outside / "victim")
        with pytest.raises(DataLossError, match="symlink"):
            c.pull_files(allow_pattern=["*sub/*"])
        assert list(outside.iterdir()) == [outside / "victim"]
        c.pull_files(allow_pattern=["*top.json"])  # replaces the link, not its target
        assert (outside / "victim").read_bytes() == b"keep me"
        assert not (root / "top.json").is_symlink() and (root / "top.json").read_bytes() == b"new"


def test_local_dir_with_files_is_removed_on_close(model):
    model.pull_files()
    root = Path(model.get_local_dir())
    assert (root / "sub/dir/preprocessor_config.json").exists()
    model.close()
    assert not root.exists()


@pytest.fixture
def saved(store_url):
    """A model whose files were saved with a manifest, and a plain connector
    that writes under it as someone else would."""
    with create_remote_connector(model_url(store_url, "org/saved")) as c, \
            create_remote_connector(store_url) as plain:
        c.save_files(FILES)
        yield c, plain


def test_with_a_manifest_only_its_files_are_pulled_and_checked(saved):
    c, plain = saved
    plain.setbytes("org/saved/files/stray.py", b"import os  # not the model's")
    assert sorted(c.pull_files()) == sorted(FILES)
    assert pulled(c) == FILES


@pytest.mark.parametrize("damage", ["replaced", "same size", "missing"])
def test_a_listed_file_that_differs_or_is_missing_is_data_loss_and_nothing_is_written(saved, damage):
    c, plain = saved
    key = "org/saved/files/config.json"
    if damage == "replaced":
        plain.setbytes(key, b'{"layers": 99}')
    elif damage == "same size":
        plain.setbytes(key, b'{"hidden_size": 65}')
    else:
        plain.remove(key)
    message = "not in the store" if damage == "missing" else "'config.json' differs from the manifest"
    with pytest.raises(DataLossError, match=message):
        c.pull_files()
    assert pulled(c) == {}
    # Files the filter leaves out are not read.
    assert c.pull_files(allow_pattern=["tokenizer.*"]) == ["tokenizer.json", "tokenizer.model"]


def test_files_whose_save_did_not_finish_are_refused(saved):
    c, plain = saved
    manifest = json.loads(plain.getstr("org/saved/manifest/files.json"))
    manifest["state"] = "saving"
    plain.setstr("org/saved/manifest/files.json", json.dumps(manifest))
    with pytest.raises(FailedPreconditionError, match="not completely saved"):
        c.pull_files(allow_pattern=["*config.json"])
    assert pulled(c) == {}
    c.save_files(FILES)  # finishes it
    assert sorted(c.pull_files(allow_pattern=["config.json"])) == ["config.json"]


def test_pulls_racing_re_saves_get_one_version_or_say_the_files_changed(saved):
    c, _ = saved
    versions = [dict(FILES, **{"config.json": f'{{"v": {v}}}'.encode(),
                               "tokenizer.json": f'{{"tok": {v}}}'.encode()}) for v in range(2)]
    stop = threading.Event()

    def resave():
        with create_remote_connector(c.url) as writer:
            v = 0
            while not stop.is_set():
                writer.save_files(versions[v])
                v ^= 1

    thread = threading.Thread(target=resave)
    thread.start()
    outcomes = {"pulled": 0, "changed": 0, "saving": 0}
    try:
        for _ in range(60):
            with create_remote_connector(c.url) as reader:
                try:
                    reader.pull_files(allow_pattern=["config.json", "tokenizer.json"])
                except AbortedError as e:
                    assert "changed during the pull" in str(e)
                    outcomes["changed"] += 1
                    continue
                except FailedPreconditionError:
                    outcomes["saving"] += 1
                    continue
                got = pulled(reader)
                assert any(got == {k: v[k] for k in got} for v in [FILES, *versions]), got
                outcomes["pulled"] += 1
    finally:
        stop.set()
        thread.join()
    assert outcomes["pulled"] > 0, outcomes

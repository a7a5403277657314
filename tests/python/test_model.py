"""Model weights: save (state dict, Hugging Face directory), load
(weight_iterator, load_state_dict, load_into), the manifest, verify, remove,
and what happens when the stored model is incomplete, corrupted or hostile.
Each test runs on memory:// and on a real Mooncake (store_url)."""

from __future__ import annotations

import gc
import json
import os
import re
import threading
import time
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_bit_exact, random_tensor
from model_fixtures import (EXPECTED_FILES, generated_state_dict, model_url, silero_vad_safetensors,
                            write_hf_directory)
from mooncake_connector import (AbortedError, DataLossError, FailedPreconditionError, InvalidArgumentError,
                                NotFoundError, create_remote_connector)


def assert_same_state_dict(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for name, t in expected.items():
        assert_bit_exact(actual[name], t)


@pytest.fixture
def model(store_url):
    c = create_remote_connector(model_url(store_url, "org/gen-model", chunked=True))
    yield c
    c.close()


def test_state_dict_round_trip_every_load_path(model):
    sd = generated_state_dict()
    model.save_state_dict(sd)
    info = model.inspect_model()
    assert info["complete"] and info["has_manifest"] and info["ranks"] == [0]
    assert info["tensors"] == len(sd)
    assert info["bytes"] == sum(t.numel() * t.element_size() for t in sd.values())

    pairs = list(model.weight_iterator(0))
    assert [n for n, _ in pairs] == list(sd)  # the saved order
    assert_same_state_dict(dict(pairs), sd)
    assert_same_state_dict(model.load_state_dict(0), sd)

    dest = {n: torch.empty_like(t) for n, t in sd.items()}
    ptrs = {n: t.data_ptr() for n, t in dest.items()}
    assert model.load_into(dest) == []
    assert_same_state_dict(dest, sd)
    assert {n: t.data_ptr() for n, t in dest.items()} == ptrs  # filled in place
    assert model.verify_model()["problems"] == []


def test_keys_are_sglangs_layout_and_tensors_are_ordinary_values(model, store_url):
    sd = {"a.weight": random_tensor(torch.bfloat16, (4, 4)), "b": random_tensor(torch.int8, (3,))}
    model.save_state_dict(sd, rank=1, world_size=2)
    with create_remote_connector(store_url) as plain:
        keys = plain.list("org/gen-model/keys/")
        assert keys == ["org/gen-model/keys/rank_1/a.weight", "org/gen-model/keys/rank_1/b"]
        assert_bit_exact(plain.get("org/gen-model/keys/rank_1/a.weight"), sd["a.weight"])
        assert plain.list("org/gen-model/manifest/") == ["org/gen-model/manifest/rank_1.json"]
        manifest = json.loads(plain.getstr("org/gen-model/manifest/rank_1.json"))
    assert manifest["state"] == "complete" and manifest["rank"] == 1 and manifest["world_size"] == 2
    assert [t["name"] for t in manifest["tensors"]] == ["a.weight", "b"]
    assert manifest["tensors"][0] | {"xxh3": None} == {
        "name": "a.weight", "dtype": "BF16", "shape": [4, 4], "nbytes": 32, "xxh3": None,
        "save": manifest["save"]}
    assert len(manifest["save"]) == 16 and manifest["format_version"] == 4
    assert manifest["xxh3_piece"] == 16 << 20
    assert manifest["tool"].startswith("mooncake-connector ")
    # Rank 0 of a world of 2 is missing: the model is not complete.
    info = model.inspect_model()
    assert not info["complete"] and any("rank 0" in p for p in info["problems"])


def test_shared_storage_is_stored_once_and_loads_shared(model, store_url):
    embed = random_tensor(torch.float32, (50, 8))
    sd = {"embed.weight": embed, "lm_head.weight": embed, "other": embed.clone()}
    model.save_state_dict(sd)
    with create_remote_connector(store_url) as plain:
        assert plain.list("org/gen-model/keys/rank_0/") == [
            "org/gen-model/keys/rank_0/embed.weight", "org/gen-model/keys/rank_0/other"]
    loaded = model.load_state_dict()
    assert_same_state_dict(loaded, sd)
    assert loaded["embed.weight"].data_ptr() == loaded["lm_head.weight"].data_ptr()
    assert loaded["embed.weight"].data_ptr() != loaded["other"].data_ptr()
    # Both names can be filled, and an alias alone too.
    dest = {"lm_head.weight": torch.zeros(50, 8)}
    assert model.load_into(dest, strict=False) == ["embed.weight", "other"]
    assert_bit_exact(dest["lm_head.weight"], embed)


def test_hf_directory_save_load_and_pull_files(model, tmp_path):
    sd = generated_state_dict(seed=3, small=30)
    root = write_hf_directory(tmp_path / "hf", sd)
    model.save_directory(root)
    expected = {}
    for shard in sorted(root.glob("*.safetensors")):
        expected.update(load_file(str(shard)))
    assert_same_state_dict(model.load_state_dict(), expected)
    info = model.inspect_model()
    assert info["complete"] and info["files"] == len(EXPECTED_FILES)
    written = model.pull_files()
    assert set(written) == EXPECTED_FILES
    local = Path(model.get_local_dir())
    for rel in EXPECTED_FILES:
        assert (local / rel).read_bytes() == (root / rel).read_bytes(), rel
    # SGLang's config pull.
    with create_remote_connector(model.url) as other:
        assert other.pull_files(allow_pattern=["*config.json"]) == ["config.json",
                                                                    "generation_config.json"]


def test_hf_directory_index_must_match_the_shards(model, tmp_path):
    root = write_hf_directory(tmp_path / "hf", {"a": torch.ones(2), "b": torch.zeros(3)}, shards=2)
    index = json.loads((root / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidArgumentError, match="ghost"):
        model.save_directory(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="no \\*.safetensors"):
        model.save_directory(tmp_path / "empty")


def _as_hf_cache_snapshot(folder: Path, repo: Path) -> Path:
    """The folder laid out as huggingface_hub caches a download: its bytes in
    REPO/blobs/<hash>, REPO/snapshots/<rev>/<name> relative links to them."""
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        rel = f.relative_to(folder)
        (repo / "blobs" / f"blob{i:04d}").write_bytes(f.read_bytes())
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(rel.parts) + 1), "blobs", f"blob{i:04d}"))
    return snapshot


def test_hugging_face_cache_snapshot_saves_under_the_links_names(model, tmp_path):
    sd = generated_state_dict(seed=4, small=12)
    plain = write_hf_directory(tmp_path / "hf", sd)
    snapshot = _as_hf_cache_snapshot(plain, tmp_path / "models--org--gen")
    assert (snapshot / "config.json").is_symlink()
    model.save_directory(str(snapshot) + "/")
    assert_same_state_dict(model.load_state_dict(), {n: t.contiguous() for n, t in sd.items()})
    written = model.pull_files()
    assert set(written) == EXPECTED_FILES
    for rel in EXPECTED_FILES:
        assert (Path(model.get_local_dir()) / rel).read_bytes() == (plain / rel).read_bytes(), rel


def test_links_in_a_saved_folder(model, tmp_path):
    root = write_hf_directory(tmp_path / "hf", {"a": torch.ones(2)}, shards=1)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "merges.txt").write_text("a b\n")
    (outside / "secret").write_text("not for the store")
    # A folder linked from inside the folder is followed, under the link's name.
    (root / "tokenizer" / "extra").mkdir()
    (root / "tokenizer" / "extra" / "special.json").write_text("{}")
    (root / "tokenizer-v2").symlink_to("tokenizer", target_is_directory=True)
    model.save_directory(root)
    assert {"tokenizer-v2/vocab.txt", "tokenizer-v2/extra/special.json"} <= set(model.pull_files())
    # A link out of the folder is refused, naming it, unless allowed.
    (root / "stolen").symlink_to(outside / "secret")
    with pytest.raises(InvalidArgumentError, match="'stolen' links to .*outside the folder"):
        model.save_directory(root)
    (root / "stolen").unlink()
    (root / "merges").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidArgumentError, match="'merges' links to .*outside the folder"):
        model.save_directory(root)
    model.save_directory(root, follow_links_outside=True)
    assert "merges/merges.txt" in model.pull_files()
    (root / "merges").unlink()
    # A loop and a dangling link are clear errors.
    (root / "tokenizer" / "up").symlink_to("..", target_is_directory=True)
    with pytest.raises(InvalidArgumentError, match="'tokenizer(-v2)?/up' links to .*a loop"):
        model.save_directory(root)
    (root / "tokenizer" / "up").unlink()
    (root / "gone.json").symlink_to(tmp_path / "nothing-here")
    with pytest.raises(NotFoundError, match="'gone.json' is a link that does not resolve"):
        model.save_directory(root)


@pytest.mark.parametrize("change", ["truncated", "appended to"])
def test_a_shard_that_changes_during_the_save_stops_it_naming_the_shard(model, tmp_path, change):
    root = write_hf_directory(tmp_path / "hf", generated_state_dict(seed=6, small=8), shards=2)
    shard = sorted(root.glob("*.safetensors"))[0]

    def meddle(done: int, total: int) -> None:
        if change == "truncated":
            os.truncate(shard, shard.stat().st_size // 2)
        else:
            with open(shard, "ab") as f:
                f.write(b"\0" * 100)

    start = time.monotonic()
    with pytest.raises(InvalidArgumentError, match=f"'{shard.name}' changed while it was being saved"):
        model.save_directory(root, progress=meddle)
    assert time.monotonic() - start < 10
    assert not model.inspect_model()["complete"]


def test_real_model_from_a_pypi_package_is_bit_exact(model, tmp_path):
    weights = silero_vad_safetensors()
    root = tmp_path / "silero"
    root.mkdir()
    (root / "model.safetensors").write_bytes(weights.read_bytes())
    (root / "config.json").write_text('{"model_type": "silero_vad"}')
    model.save_directory(root)
    expected = load_file(str(weights))
    assert len(expected) == 15
    assert_same_state_dict(model.load_state_dict(), expected)
    assert_same_state_dict(dict(model.weight_iterator()), expected)
    assert model.verify_model() == {"tensors": 15, "files": 1,
                                    "bytes": model.inspect_model()["bytes"], "problems": []}


def test_resave_skips_unchanged_values_and_removes_stale_ones(model, store_url):
    sd = {"keep": random_tensor(torch.float32, (100,)), "gone": random_tensor(torch.int8, (5,))}
    model.save_state_dict(sd)
    seen = []
    sd2 = {"keep": sd["keep"], "new": random_tensor(torch.bfloat16, (7,))}
    model.save_state_dict(sd2, progress=lambda done, total: seen.append((done, total)))
    # "keep" was skipped: the first progress report already counts it done.
    assert seen[0][0] >= 400 and seen[-1][0] == seen[-1][1]
    with create_remote_connector(store_url) as plain:
        assert sorted(plain.list("org/gen-model/keys/rank_0/")) == [
            "org/gen-model/keys/rank_0/keep", "org/gen-model/keys/rank_0/new"]
    assert_same_state_dict(model.load_state_dict(), sd2)


def test_resave_repairs_values_overwritten_since(model, store_url):
    sd = generated_state_dict(seed=5, small=6)
    model.save_state_dict(sd)
    name = sorted(sd)[0]
    with create_remote_connector(store_url) as plain:
        # Same dtype and shape, other bytes, set by hand: the key exists and the
        # manifest's entry matches what a re-save would write.
        plain.set(f"org/gen-model/keys/rank_0/{name}", torch.zeros_like(sd[name]))
    with pytest.raises(DataLossError, match=f"'{name}'.*not the value the manifest lists"):
        model.load_state_dict(verify=False)
    model.save_state_dict(sd)  # repairs: the overwritten value is read back, found wrong, written again
    assert_same_state_dict(model.load_state_dict(), sd)
    assert model.verify_model()["problems"] == []


def test_a_value_of_another_save_is_named_as_such_with_or_without_checksums(model, store_url):
    old = {"w": torch.arange(64, dtype=torch.float32), "v": torch.ones(8)}
    new = {"w": torch.arange(64, dtype=torch.float32) * 2, "v": torch.ones(8)}
    model.save_state_dict(old)
    with create_remote_connector(store_url) as plain, create_remote_connector(model.url) as other:
        manifest = plain.getstr("org/gen-model/manifest/rank_0.json")
        other.save_state_dict(new)
        # Two saves at once can leave the first one's manifest over the second
        # one's values: made here by putting the manifest back.
        plain.setstr("org/gen-model/manifest/rank_0.json", manifest)
    for verify in (False, True):
        with pytest.raises(DataLossError, match="'w'.*another save of the model wrote it"):
            model.load_state_dict(verify=verify)
    model.save_state_dict(old)  # repairs
    assert_same_state_dict(model.load_state_dict(verify=False), old)


def _versions(n: int = 2) -> list[dict[str, torch.Tensor]]:
    return [{f"t{i}": torch.full((4096,), float(v * 100 + i)) for i in range(12)} for v in range(n)]


def _which_version(sd: dict, versions: list[dict]) -> int:
    """The version `sd` is all of; fails on a mix."""
    for v, want in enumerate(versions):
        if sorted(sd) == sorted(want) and all(torch.equal(sd[k], want[k]) for k in want):
            return v
    raise AssertionError("a load returned tensors of more than one save: " +
                         str({k: float(t[0]) for k, t in sd.items()}))


def test_two_writers_of_one_model_leave_one_version_or_say_what_happened(store_url):
    versions = _versions()
    url = model_url(store_url, "race/writers")
    keeper = create_remote_connector(url)  # a memory:// store lives while a connector holds it
    outcomes: list[str] = []

    def save(v: int) -> None:
        with create_remote_connector(url) as c:
            for _ in range(6):
                try:
                    c.save_state_dict(versions[v], batch_bytes=16 << 10)  # 3 tensors a batch
                    outcomes.append("saved")
                except AbortedError as e:
                    assert "two saves at once" in str(e)
                    outcomes.append("stopped")

    threads = [threading.Thread(target=save, args=(v,)) for v in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "saved" in outcomes, outcomes
    with create_remote_connector(url) as c:
        for verify in (False, True):
            try:
                _which_version(c.load_state_dict(verify=verify), versions)
            except (DataLossError, FailedPreconditionError) as e:
                # Left by a save that stopped, or (a narrow window) a mix: named, never "corrupted".
                assert "corrupted" not in str(e)
                assert re.search("another save of the model wrote it|not complete", str(e)), e
        c.save_state_dict(versions[1])  # saving alone again always leaves one whole version
        assert _which_version(c.load_state_dict(verify=False), versions) == 1
    keeper.close()


def test_loads_racing_re_saves_return_one_version_or_say_the_model_changed(store_url):
    versions = _versions()
    url = model_url(store_url, "race/reload")
    keeper = create_remote_connector(url)  # a memory:// store lives while a connector holds it
    keeper.save_state_dict(versions[0])
    stop = threading.Event()

    def resave() -> None:
        with create_remote_connector(url) as c:
            v = 1
            while not stop.is_set():
                c.save_state_dict(versions[v], batch_bytes=16 << 10)
                v ^= 1

    writer = threading.Thread(target=resave)
    writer.start()
    seen = {"whole": 0, "changed": 0, "saving": 0}
    try:
        for i in range(40):
            with create_remote_connector(url) as c:
                try:
                    _which_version(c.load_state_dict(verify=bool(i % 2)), versions)
                    seen["whole"] += 1
                except AbortedError as e:
                    assert "changed during the load" in str(e)
                    seen["changed"] += 1
                except FailedPreconditionError as e:
                    assert "not complete" in str(e)
                    seen["saving"] += 1
    finally:
        stop.set()
        writer.join()
        keeper.close()
    assert seen["whole"] + seen["changed"] + seen["saving"] == 40


def test_corrupted_tensor_is_caught_by_verify_and_by_a_verifying_load(model, store_url):
    sd = generated_state_dict(seed=5, small=10)
    model.save_state_dict(sd)
    victim = "embed_tokens.weight"
    bad = sd[victim].clone()
    bad.view(torch.uint8).reshape(-1)[-1 - 12345] ^= 0x40
    with create_remote_connector(store_url) as plain:
        # One flipped bit in the stored value's data: same size and header.
        key = f"org/gen-model/keys/rank_0/{victim}"
        raw = bytearray(plain.getbytes(key))
        raw[-1 - 12345] ^= 0x40
        plain.setbytes(key, bytes(raw))
    report = model.verify_model()
    assert len(report["problems"]) == 1 and victim in report["problems"][0]
    with pytest.raises(DataLossError, match=f"checksum mismatch in tensor '{victim}'"):
        model.load_state_dict()
    with pytest.raises(DataLossError, match=victim):
        model.load_into({n: torch.empty_like(t) for n, t in sd.items()})
    # verify=False trusts the store.
    assert_bit_exact(model.load_state_dict(verify=False)[victim], bad)


def test_lost_or_replaced_tensor_is_data_loss_naming_it(model, store_url):
    sd = {"a": random_tensor(torch.float32, (10,)), "b": random_tensor(torch.float32, (10,))}
    model.save_state_dict(sd)
    with create_remote_connector(store_url) as plain:
        assert plain.remove("org/gen-model/keys/rank_0/b")
        with pytest.raises(DataLossError, match="'b'.*not in the store"):
            list(model.weight_iterator())
        # Same bytes, other shape (set by another writer: its header also
        # lacks the save's marker; the same header size with another shape is
        # "not the tensor the manifest lists", model_test.cc).
        plain.set("org/gen-model/keys/rank_0/b", torch.zeros(5, 2))
        with pytest.raises(DataLossError, match="'b'.*does not match the manifest"):
            model.load_state_dict()
        plain.set("org/gen-model/keys/rank_0/b", torch.zeros(11))  # other size
        with pytest.raises(DataLossError, match="'b'.*does not match the manifest"):
            model.load_state_dict()
    assert "b" in " ".join(model.verify_model()["problems"])


def test_load_into_checks_what_it_is_given(model):
    model.save_state_dict({"w": torch.ones(4, 4), "v": torch.ones(3)})
    with pytest.raises(NotFoundError, match="no tensor 'nope'"):
        model.load_into({"nope": torch.empty(4, 4)})
    with pytest.raises(InvalidArgumentError, match="F32\\[4, 4\\].*F32\\[16\\]"):
        model.load_into({"w": torch.empty(16)})
    with pytest.raises(InvalidArgumentError, match="BF16"):
        model.load_into({"w": torch.empty(4, 4, dtype=torch.bfloat16)})
    with pytest.raises(KeyError, match="'v'|v"):
        model.load_into({"w": torch.empty(4, 4)})
    # A non-contiguous destination is filled through a staging copy.
    big = torch.zeros(4, 8)
    dest = big[:, ::2]
    assert model.load_into({"w": dest}, strict=False) == ["v"]
    assert torch.equal(dest, torch.ones(4, 4)) and torch.equal(big[:, 1::2], torch.zeros(4, 4))


def test_model_without_manifest_loads_by_listing(model, store_url):
    # What SGLang's RemoteModelLoader.save_model writes: set() per tensor.
    sd = {"x.weight": random_tensor(torch.bfloat16, (8, 8)), "y": random_tensor(torch.int64, (3,))}
    with create_remote_connector(store_url) as plain:
        for n, t in sd.items():
            plain.set(f"org/gen-model/keys/rank_0/{n}", t)
    assert_same_state_dict(dict(model.weight_iterator(0)), sd)
    dest = {n: torch.empty_like(t) for n, t in sd.items()}
    model.load_into(dest)
    assert_same_state_dict(dest, sd)
    info = model.inspect_model()
    assert not info["has_manifest"] and info["ranks"] == [0] and info["tensors"] == 2
    with pytest.raises(FailedPreconditionError, match="no manifest"):
        model.verify_model()


def test_incomplete_save_never_looks_complete(model, store_url):
    sd = {"a": torch.ones(3)}
    model.save_state_dict(sd)
    with create_remote_connector(store_url) as plain:
        manifest = json.loads(plain.getstr("org/gen-model/manifest/rank_0.json"))
        manifest["state"] = "saving"
        plain.setstr("org/gen-model/manifest/rank_0.json", json.dumps(manifest))
    assert not model.inspect_model()["complete"]
    with pytest.raises(FailedPreconditionError, match="not complete.*save again to resume"):
        list(model.weight_iterator())
    model.save_state_dict(sd)  # resumes: nothing to write, publishes
    assert model.inspect_model()["complete"]


@pytest.mark.parametrize("manifest", [
    "not json", "[]", '{"format": "other"}',
    '{"format": "mooncake-connector-model-manifest", "format_version": 1, "tool": "t", "created": "c",'
    ' "state": "complete", "world_size": 1, "rank": 0, "tensors": [{"name": "a", "dtype": "F32",'
    ' "shape": [1000000000000], "nbytes": 4, "xxh3": "0000000000000000"}]}',
    '{"format": "mooncake-connector-model-manifest", "format_version": 1, "tool": "t", "created": "c",'
    ' "state": "complete", "world_size": 1, "rank": 0, "tensors": [{"name": "a", "dtype": "F32",'
    ' "shape": [1], "nbytes": 4, "xxh3": "0", "alias_of": "a"}]}',
    '{"format": "mooncake-connector-model-manifest", "format_version": 1, "tool": "t", "created": "c",'
    ' "state": "complete", "world_size": 1, "rank": 0, "tensors": [[[[[[[]]]]]]]}',
])
def test_hostile_manifest_is_data_loss(model, store_url, manifest):
    model.save_state_dict({"a": torch.ones(1)})
    with create_remote_connector(store_url) as plain:
        plain.setstr("org/gen-model/manifest/rank_0.json", manifest)
    with pytest.raises(DataLossError, match="manifest"):
        list(model.weight_iterator())


def test_newer_manifest_version_is_refused_clearly(model, store_url):
    model.save_state_dict({"a": torch.ones(1)})
    with create_remote_connector(store_url) as plain:
        m = json.loads(plain.getstr("org/gen-model/manifest/rank_0.json"))
        m["format_version"] = 99
        plain.setstr("org/gen-model/manifest/rank_0.json", json.dumps(m))
    with pytest.raises(Exception, match="version 99 is not supported"):
        model.load_state_dict()


def test_save_refuses_bad_names_and_files(model):
    with pytest.raises(InvalidArgumentError, match="control character"):
        model.save_state_dict({"bad\nname": torch.ones(1)})
    with pytest.raises(InvalidArgumentError, match="empty name"):
        model.save_state_dict({"": torch.ones(1)})
    for path in ["../evil", "/etc/passwd", "a/../../b", "a//b", ""]:
        with pytest.raises(Exception):
            model.save_files({path: b"x"})
    model.save_files({"config.json": b"{}", "sub/t.model": b"\x00\x01"})
    assert sorted(model.pull_files()) == ["config.json", "sub/t.model"]


def test_remove_model_removes_everything_and_only_it(model, store_url):
    model.save_state_dict(generated_state_dict(small=5))
    model.save_files({"config.json": b"{}"})
    with create_remote_connector(model_url(store_url, "org/gen-model/nested")) as nested:
        nested.save_state_dict({"z": torch.ones(2)})
    with create_remote_connector(store_url) as plain:
        plain.setstr("org/gen-model-not-this", "x")
        assert model.remove_model() == 9 + 2 + 1  # tensors, manifest parts, files
        remaining = plain.list("org/")
    assert remaining == ["org/gen-model-not-this", "org/gen-model/nested/keys/rank_0/z",
                         "org/gen-model/nested/manifest/rank_0.json"]
    with pytest.raises(NotFoundError):
        model.remove_model()
    with pytest.raises(NotFoundError):
        model.inspect_model()


def test_list_models(store_url):
    with create_remote_connector(model_url(store_url, "m1")) as a, \
            create_remote_connector(model_url(store_url, "team/m2")) as b, \
            create_remote_connector(store_url) as plain:
        a.save_state_dict({"w": torch.ones(4)})
        b.save_state_dict({"w": torch.ones(2)}, rank=0, world_size=2)
        plain.set("sglang-made/keys/rank_0/w", torch.ones(1))
        plain.setstr("unrelated", "x")
        models = {m["name"]: m for m in plain.list_models()}
    assert sorted(models) == ["m1", "sglang-made", "team/m2"]
    assert models["m1"]["complete"] and models["m1"]["bytes"] == 16
    assert not models["team/m2"]["complete"] and models["team/m2"]["world_size"] == 2
    assert not models["sglang-made"]["has_manifest"]


def test_bad_inputs_a_save_or_load_must_refuse(model, tmp_path):
    with pytest.raises(InvalidArgumentError, match="world_size 65537 is out of range"):
        model.save_state_dict({"w": torch.ones(1)}, rank=0, world_size=65537)
    flags = torch.tensor([True, False])
    flags.view(torch.uint8)[0] = 2  # a BOOL no load could return as saved
    with pytest.raises(InvalidArgumentError, match="'flags' is BOOL but holds a byte"):
        model.save_state_dict({"flags": flags})
    model.save_state_dict({"w": torch.ones(4)})
    with pytest.raises(InvalidArgumentError, match="meta device"):
        model.load_into({"w": torch.empty(4, device="meta")})
    root = write_hf_directory(tmp_path / "hf", {"a": torch.ones(2)}, shards=1)
    (root / os.fsdecode(b"bad-\xff.json")).write_bytes(b"{}")
    with pytest.raises(InvalidArgumentError, match="not valid UTF-8"):
        model.save_directory(root)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_a_cuda_load_without_cuda_says_so(model):
    model.save_state_dict({"w": torch.ones(2)})
    with pytest.raises(FailedPreconditionError, match="'cuda' was asked for, but CUDA is not available here"):
        model.load_state_dict(device="cuda")
    with create_remote_connector(model.url, device="cuda:0") as on_gpu:
        with pytest.raises(FailedPreconditionError, match="CUDA is not available here"):
            list(on_gpu.weight_iterator())


def test_resave_for_fewer_ranks_leaves_a_complete_model(model, store_url):
    for rank in range(2):
        model.save_state_dict({"w": torch.full((4,), float(rank))}, rank=rank, world_size=2)
    assert model.inspect_model()["complete"]
    model.save_state_dict({"w": torch.full((8,), 7.0)}, rank=0, world_size=1)
    info = model.inspect_model()
    assert info["complete"] and info["world_size"] == 1 and info["ranks"] == [0], info["problems"]
    with create_remote_connector(store_url) as plain:
        assert plain.list("org/gen-model/") == ["org/gen-model/keys/rank_0/w", "org/gen-model/manifest/rank_0.json"]


def test_model_names_that_read_as_another_models_keys_are_refused(store_url):
    with create_remote_connector(model_url(store_url, "org")) as org:
        org.save_state_dict({"w": torch.ones(2)})
        org.save_files({"config.json": b"{}"})
        for name in ["org/files/llama", "org/keys/x", "manifest", "a/manifest/b", "files"]:
            with create_remote_connector(model_url(store_url, name)) as bad:
                with pytest.raises(InvalidArgumentError, match=f"model name '{name}' has a segment"):
                    bad.save_state_dict({"w": torch.zeros(2)})
                with pytest.raises(InvalidArgumentError, match="reserves"):
                    bad.remove_model()
        # Segments that only contain a reserved word are ordinary.
        with create_remote_connector(model_url(store_url, "org/filesystem-model/keys2")) as fine:
            fine.save_state_dict({"w": torch.zeros(2)})
        assert [m["name"] for m in org.list_models()] == ["org", "org/filesystem-model/keys2"]
        org.save_files({"config.json": b"{}"})
        assert org.remove_model() == 1 + 2 + 1
        assert [m["name"] for m in org.list_models()] == ["org/filesystem-model/keys2"]


def test_listing_a_prefix_matches_whole_segments(store_url):
    with create_remote_connector(model_url(store_url, "team/m")) as m, \
            create_remote_connector(model_url(store_url, "team/m/v2")) as v2, \
            create_remote_connector(model_url(store_url, "team/mx")) as mx, \
            create_remote_connector(model_url(store_url, "teamwork")) as tw:
        for c in (m, v2, mx, tw):
            c.save_state_dict({"w": torch.ones(1)})
        names = lambda url: [i["name"] for i in create_remote_connector(url).list_models()]
        assert names(model_url(store_url, "team/m")) == ["team/m", "team/m/v2"]
        assert names(model_url(store_url, "team/m/")) == ["team/m", "team/m/v2"]
        assert names(model_url(store_url, "team")) == ["team/m", "team/m/v2", "team/mx"]
        assert "teamwork" in names(store_url)


def test_device_cuda_when_available(model):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch on this machine (GPU runs: bench/results/)")
    sd = generated_state_dict(small=10)
    # Many same-sized tensors: host buffers freed after each copy get reused,
    # which must not make two names share one device tensor.
    sd.update({f"same.{i}": random_tensor(torch.bfloat16, (256, 256), seed=50 + i) for i in range(8)})
    sd["tied"] = sd["same.3"]
    model.save_state_dict(sd)
    loaded = model.load_state_dict(device="cuda")
    assert all(t.device.type == "cuda" for t in loaded.values())
    assert_same_state_dict({n: t.cpu() for n, t in loaded.items()}, sd)
    assert loaded["tied"].data_ptr() == loaded["same.3"].data_ptr()
    assert loaded["same.2"].data_ptr() != loaded["same.3"].data_ptr()
    with create_remote_connector(model.url, device="cuda") as on_gpu:
        pairs = dict(on_gpu.weight_iterator())
        assert all(t.device.type == "cuda" for t in pairs.values())
        assert_same_state_dict({n: t.cpu() for n, t in pairs.items()}, sd)
    dest = {n: torch.empty_like(t, device="cuda") for n, t in sd.items()}
    model.load_into(dest)
    assert_same_state_dict({n: t.cpu() for n, t in dest.items()}, sd)


def test_device_groups_plan_aliases_in_cpp(model):
    # A load onto a GPU is planned in C++ (ModelReader::PlanDeviceGroups);
    # Python allocates each group's tensors and hands them out. Checked here
    # without a GPU: the plan and the binding's tuples.
    x, y = torch.ones(32), torch.zeros(8, dtype=torch.uint8)
    model.save_state_dict({"x": x, "y": y, "x_tied": x, "z": torch.ones(100, dtype=torch.uint8)})
    reader = model._model().reader(0, True, 1 << 20, None)
    assert reader.device_groups(1) == [
        ([("x", "F32", [32], 128)], [("x", "x")], []),
        ([("y", "U8", [8], 8)], [("y", "y")], ["y"]),
        ([("z", "U8", [100], 100)], [("x_tied", "x"), ("z", "z")], ["x", "z"]),
    ]
    [(fill, hand_out, drop)] = reader.device_groups(2**64 - 1)
    assert [f[0] for f in fill] == ["x", "y", "z"] and len(hand_out) == 4 and sorted(drop) == ["x", "y", "z"]


def test_tensors_cross_into_cpp_by_dlpack(model):
    # Parameters (which require grad), numpy arrays, bool and float8 go in
    # the one way; memory of the wrong kind is refused by name.
    sd = {"p": torch.nn.Parameter(torch.randn(3, 4)), "flags": torch.tensor([True, False]),
          "f8": torch.randn(5).to(torch.float8_e4m3fn)}
    model.save_state_dict({**sd, "np": torch.arange(6).numpy()})
    dest = {"p": torch.nn.Parameter(torch.zeros(3, 4)), "flags": torch.zeros(2, dtype=torch.bool),
            "f8": torch.zeros(5, dtype=torch.float8_e4m3fn), "np": torch.zeros(6, dtype=torch.int64)}
    assert model.load_into(dest) == []
    assert torch.equal(dest["p"].detach(), sd["p"].detach()) and dest["flags"].tolist() == [True, False]
    assert torch.equal(dest["f8"].view(torch.uint8), sd["f8"].view(torch.uint8))
    assert dest["np"].tolist() == list(range(6))
    reader = model._model().reader(0, True, 1 << 20, None)
    with pytest.raises(InvalidArgumentError, match="tensor 'p' is in CPU memory, a CUDA device's was expected"):
        reader.load_into_cuda([("p", torch.utils.dlpack.to_dlpack(torch.zeros(3, 4)))], 0)
    with pytest.raises(InvalidArgumentError, match="tensor 'p' is not contiguous"):
        reader.load_into([("p", torch.utils.dlpack.to_dlpack(torch.zeros(4, 3).t()))])


def test_closed_connector_fails_cleanly(model):
    model.save_state_dict({"a": torch.ones(1)})
    it = model.weight_iterator()
    model.close()
    with pytest.raises(FailedPreconditionError):
        next(it)
    with pytest.raises(FailedPreconditionError):
        model.inspect_model()


def test_loads_under_way_when_the_connector_closes_end_cleanly(model):
    sd = {f"t{i}": random_tensor(torch.float32, (1 << 18,), seed=i) for i in range(6)}  # 1 MiB each
    model.save_state_dict(sd)
    it = model.weight_iterator(batch_bytes=2 << 20)
    name, first = next(it)  # a reader open, a batch handed out
    model.close()
    del it  # the reader goes after its connector
    gc.collect()
    assert_bit_exact(first, sd[name])


def test_close_during_loads_on_other_threads(model):
    """Loads and saves under way on other threads when the connector closes
    end as they would have, or fail with FailedPreconditionError at their
    next step; nothing crashes (the store goes when the last of them ends).
    This connector has a Mooncake client of its own (its chunk size)."""
    sd = {f"t{i}": random_tensor(torch.float32, (1 << 18,), seed=i) for i in range(24)}  # 1 MiB each
    model.save_state_dict(sd)
    outcomes: list[str] = []

    def loads() -> None:
        try:
            for _ in range(200):
                for name, t in model.weight_iterator(batch_bytes=2 << 20):
                    assert_bit_exact(t, sd[name])
                model.load_into({n: torch.empty_like(t) for n, t in sd.items()})
            outcomes.append("finished")
        except FailedPreconditionError:
            outcomes.append("closed")

    threads = [threading.Thread(target=loads) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    model.close()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert outcomes == ["closed", "closed"]
    with pytest.raises(FailedPreconditionError):
        model.load_state_dict()


def test_url_must_name_a_model(store_url):
    with create_remote_connector(store_url) as c:
        with pytest.raises(InvalidArgumentError, match="names no model"):
            c.save_state_dict({"a": torch.ones(1)})


def test_an_iterator_keeps_its_connector_open(model, store_url):
    """`for n, t in create_remote_connector(url).weight_iterator(): ...`: the
    connector has no other holder while the loop runs; it must not be
    collected and closed under the iterator."""
    sd = generated_state_dict(small=12)
    model.save_state_dict(sd, batch_bytes=64 << 10)  # several batches
    url = model_url(store_url, "org/gen-model", chunked=True)
    got = {}
    for name, tensor in create_remote_connector(url).weight_iterator(batch_bytes=64 << 10):
        gc.collect()
        got[name] = tensor.clone()
    assert_same_state_dict(got, sd)

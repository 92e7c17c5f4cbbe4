"""The local model registry on real GGUF files (tests/gguf_models.py) and a real SQLite state db."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from gguf import GGUFWriter

from securellm_bridge.config import parse_text
from securellm_bridge.config.local import LocalConfig, LocalModelConfig
from securellm_bridge.errors import ConfigErrors
from securellm_bridge.local.registry import ModelUnavailable, Registry
from securellm_bridge.local.scan import ScanResult, derive_name
from securellm_bridge.store import Database
from securellm_bridge.store import models as models_store

from .gguf_models import write_corrupt, write_tiny_llama, write_truncated

T = TypeVar("T")


def with_registry(tmp_path: Path, cfg: LocalConfig,
                  body: Callable[[Registry, Database], Awaitable[T]], state: str = "state") -> T:
    async def go() -> T:
        db = await Database.open(str(tmp_path / state))
        registry = Registry(db, cfg)
        try:
            return await body(registry, db)
        finally:
            await registry.stop()
            await db.close()
    return asyncio.run(go())


def local(*dirs: Path, **models: LocalModelConfig) -> LocalConfig:
    return LocalConfig(model_dirs=tuple(str(d) for d in dirs), models=models)


def write_split(directory: Path, stem: str, *, shards: int = 2) -> list[Path]:
    """A model split by llama-gguf-split: ``stem-0000k-of-0000n.gguf``."""
    paths = []
    for no in range(shards):
        path = directory / f"{stem}-{no + 1:05d}-of-{shards:05d}.gguf"
        writer = GGUFWriter(path, "llama")
        writer.add_uint16("split.no", no)
        writer.add_uint16("split.count", shards)
        if no == 0:
            writer.add_block_count(shards)
            writer.add_context_length(64)
            writer.add_embedding_length(32)
            writer.add_head_count(4)
        writer.add_tensor(f"blk.{no}.attn_norm.weight", np.ones(32, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        paths.append(path)
    return paths


def names(result: ScanResult) -> dict[str, set[str]]:
    return {f.name: set(getattr(result, f.name)) for f in dataclasses.fields(result) if getattr(result, f.name)}


@pytest.mark.parametrize(("file", "name"), [
    ("Llama-3.1 8B Instruct.Q4_K_M.gguf", "llama-3.1-8b-instruct.q4_k_m"),
    ("qwen2.5-coder-00001-of-00003.gguf", "qwen2.5-coder"),
    ("MODEL.GGUF", "model"),
    ("--weird__name!!.gguf", "weird__name"),
    ("___.gguf", "___"),
    ("!!!.gguf", "model"),
])
def test_names_derive_from_the_file_name(file: str, name: str) -> None:
    assert derive_name(f"/models/{file}") == name


def test_scan_finds_models_recursively(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "deep" / "er").mkdir(parents=True)
    write_tiny_llama(models / "Tiny Llama.Q8_0.gguf", dtype="q8_0", n_layer=3, n_ctx=512)
    write_tiny_llama(models / "deep" / "er" / "Other.GGUF", seed=1)
    shards = write_split(models / "deep", "big", shards=3)
    (models / "notes.txt").write_text("not a model")
    (models / "deep" / "not-a-file.gguf").mkdir()

    async def body(registry: Registry, db: Database) -> None:
        result = await registry.scan()
        assert names(result) == {"added": {"tiny-llama.q8_0", "other", "big"}}
        tiny = registry.get("tiny-llama.q8_0")
        assert tiny is not None and tiny.status == "ok" and tiny.error is None
        assert (tiny.path, tiny.format) == (str(models / "Tiny Llama.Q8_0.gguf"), "gguf")
        assert (tiny.architecture, tiny.layer_count, tiny.context_length, tiny.quantization) == \
            ("llama", 3, 512, "Q8_0")
        assert tiny.size_bytes == (models / "Tiny Llama.Q8_0.gguf").stat().st_size
        assert tiny.metadata["general.name"] == "tiny-llama"
        # Defaults when no [local.models.NAME] applies.
        assert (tiny.backend, tiny.priority, tiny.pinned, tiny.ctx, tiny.gpu_layers, tiny.keep_alive,
                tiny.parallel, tiny.extra_args, tiny.configured) == \
            ("llamacpp", 0, False, None, None, 0.0, 1, (), False)
        big = registry.get("big")
        assert big is not None and big.status == "ok" and big.path == str(shards[0])
        assert big.size_bytes == sum(p.stat().st_size for p in shards)
        assert (await big.meta()).tensor_count == 3
        assert [e.name for e in registry.list()] == ["big", "other", "tiny-llama.q8_0"]
        with pytest.raises(dataclasses.FrozenInstanceError):
            tiny.priority = 3  # type: ignore[misc]
        # The same rows are in the database.
        rows = await db.call(models_store.all_rows)
        assert {r.name: (r.path, r.status, r.layer_count) for r in rows} == {
            e.name: (e.path, e.status, e.layer_count) for e in registry.list()}
        assert next(r for r in rows if r.name == "tiny-llama.q8_0").metadata["general.name"] == "tiny-llama"

    with_registry(tmp_path, local(models), body)


def test_corrupt_files_are_recorded_and_never_stop_the_scan(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_corrupt(models / "bad-magic.gguf")
    write_truncated(models / "cut.gguf")
    (models / "empty.gguf").write_bytes(b"")
    write_split(models, "torn")[1].unlink()  # the second shard is gone
    write_tiny_llama(models / "good.gguf")

    async def body(registry: Registry, db: Database) -> None:
        result = await registry.scan()
        assert names(result) == {"added": {"good"}, "corrupt": {"bad-magic", "cut", "empty", "torn"}}
        errors = {e.name: e.error for e in registry.list() if e.status == "corrupt"}
        assert "bad magic" in errors["bad-magic"]
        assert "truncated" in errors["cut"]
        assert "shorter than a GGUF header" in errors["empty"]
        assert "torn-00002-of-00002.gguf" in errors["torn"]
        bad = registry.get("cut")
        assert bad is not None and bad.architecture is None
        with pytest.raises(ModelUnavailable, match="cut is corrupt"):
            await bad.meta()
        # Unchanged corrupt files are not parsed again; nothing is reported as new.
        again = await registry.scan()
        assert names(again) == {"unchanged": {"good", "bad-magic", "cut", "empty", "torn"}}
        rows = {r.name: r for r in await db.call(models_store.all_rows)}
        assert rows["cut"].status == "corrupt" and rows["cut"].error == errors["cut"]

    with_registry(tmp_path, local(models), body)


def test_unchanged_files_are_not_parsed_again(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = write_tiny_llama(models / "m.gguf")
    original = path.stat()

    async def body(registry: Registry, db: Database) -> None:
        assert names(await registry.scan()) == {"added": {"m"}}
        # Break the file but keep its size and mtime: a parse would now fail, so an "ok"
        # status after the rescan proves the file was not parsed again.
        with path.open("r+b") as f:
            f.write(b"GGUX")
        os.utime(path, ns=(original.st_atime_ns, original.st_mtime_ns))
        assert names(await registry.scan()) == {"unchanged": {"m"}}
        entry = registry.get("m")
        assert entry is not None and entry.status == "ok"
        # A new mtime makes the scan read it again.
        os.utime(path, ns=(original.st_atime_ns, original.st_mtime_ns + 1_000_000_000))
        assert names(await registry.scan()) == {"corrupt": {"m"}}
        entry = registry.get("m")
        assert entry is not None and entry.status == "corrupt" and "bad magic" in (entry.error or "")
        # Repaired with a different size: read again, usable again.
        write_tiny_llama(path, n_layer=4)
        assert names(await registry.scan()) == {"updated": {"m"}}
        entry = registry.get("m")
        assert entry is not None and entry.status == "ok" and entry.layer_count == 4
        assert (await entry.meta()).block_count == 4

    with_registry(tmp_path, local(models), body)


def test_vanished_file_is_missing_until_it_comes_back(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = write_tiny_llama(models / "m.gguf")
    kept = tmp_path / "kept.gguf"

    async def body(registry: Registry, db: Database) -> None:
        await registry.scan()
        first = registry.get("m")
        assert first is not None
        path.rename(kept)
        assert names(await registry.scan()) == {"missing": {"m"}}
        entry = registry.get("m")
        assert entry is not None and entry.status == "missing" and entry.error == "file not found"
        assert entry.created_at == first.created_at and entry.last_scanned == first.last_scanned
        with pytest.raises(ModelUnavailable, match="m is missing"):
            await entry.meta()
        assert names(await registry.scan()) == {}  # still missing: nothing new to report
        kept.rename(path)
        assert names(await registry.scan()) == {"updated": {"m"}}
        back = registry.get("m")
        assert back is not None and back.status == "ok" and back.created_at == first.created_at

    with_registry(tmp_path, local(models), body)


def test_renamed_and_moved_files(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "x").mkdir(parents=True)
    (models / "y").mkdir()
    write_tiny_llama(models / "x" / "old.gguf")
    write_tiny_llama(models / "x" / "m.gguf", seed=1)

    async def body(registry: Registry, db: Database) -> None:
        await registry.scan()
        (models / "x" / "old.gguf").rename(models / "x" / "new.gguf")
        (models / "x" / "m.gguf").rename(models / "y" / "m.gguf")
        assert names(await registry.scan()) == {"added": {"new", "m"}, "missing": {"old"}}
        moved = registry.get("m")
        assert moved is not None and moved.status == "ok" and moved.path == str(models / "y" / "m.gguf")
        assert sorted(e.name for e in registry.list()) == ["m", "new", "old"]
        assert len(await db.call(models_store.all_rows)) == 3

    with_registry(tmp_path, local(models), body)


def test_name_collisions_are_resolved_by_parent_dir_and_stay_stable(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for sub in ("q4", "q8", "z/q8", "a"):
        (models / sub).mkdir(parents=True)
    write_tiny_llama(models / "q4" / "m.gguf")
    write_tiny_llama(models / "q8" / "M.gguf", seed=1)
    write_tiny_llama(models / "z" / "q8" / "m.gguf", seed=2)
    os.symlink(models / "q4" / "m.gguf", models / "q4" / "same-file.gguf")  # not a second model

    def by_path(registry: Registry) -> dict[str, str]:
        return {str(Path(e.path or "").relative_to(models)): e.name for e in registry.list()}

    async def body(registry: Registry, db: Database) -> None:
        await registry.scan()
        assert by_path(registry) == {"q4/m.gguf": "m", "q8/M.gguf": "q8-m", "z/q8/m.gguf": "q8-m-2"}
        # A new file that sorts first does not take the name of an existing one.
        write_tiny_llama(models / "a" / "m.gguf", seed=3)
        assert names(await registry.scan()) == {"added": {"a-m"}, "unchanged": {"m", "q8-m", "q8-m-2"}}
        return None

    with_registry(tmp_path, local(models), body)

    async def fresh(registry: Registry, db: Database) -> dict[str, str]:
        await registry.scan()
        return by_path(registry)

    # Without history the order decides, the same way every time.
    first = with_registry(tmp_path, local(models), fresh, state="fresh1")
    assert first == {"a/m.gguf": "m", "q4/m.gguf": "q4-m", "q8/M.gguf": "q8-m", "z/q8/m.gguf": "q8-m-2"}
    assert with_registry(tmp_path, local(models), fresh, state="fresh2") == first


def test_config_overrides_names_and_settings(tmp_path: Path) -> None:
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    (models / "q4").mkdir(parents=True)
    (models / "q8").mkdir()
    elsewhere.mkdir()
    write_tiny_llama(models / "q4" / "m.gguf")
    q8 = write_tiny_llama(models / "q8" / "m.gguf", seed=1)
    outside = write_tiny_llama(elsewhere / "Outside.gguf", seed=2)
    text = f"""
    [security.tls]
    enabled = false
    [local]
    model_dirs = ["{models}"]
    scan_interval_seconds = 0
    [local.models.best]
    path = "{q8}"
    priority = 5
    pinned = true
    ctx = 4096
    gpu_layers = 10
    keep_alive = 60
    parallel = 2
    extra_args = ["--flash-attn", "on"]
    [local.models.m]
    priority = -1
    [local.models.far]
    path = "{outside}"
    [local.models.ghost]
    gpu_layers = 0
    [local.models."llama3.2:1b"]
    backend = "ollama"
    [local.models.gone]
    path = "{elsewhere / "nope.gguf"}"
    """
    cfg = parse_text(text, "config.toml", env={}).local

    async def body(registry: Registry, db: Database) -> None:
        result = await registry.scan()
        assert names(result) == {"added": {"best", "m", "far"}, "missing": {"gone"}}
        best = registry.get("best")
        assert best is not None and best.path == str(q8) and best.status == "ok"
        assert (best.priority, best.pinned, best.ctx, best.gpu_layers, best.keep_alive, best.parallel,
                best.extra_args, best.configured) == (5, True, 4096, 10, 60.0, 2, ("--flash-attn", "on"), True)
        m = registry.get("m")
        assert m is not None and m.path == str(models / "q4" / "m.gguf") and m.priority == -1 and m.configured
        assert registry.get("q8-m") is None  # the file is "best", not a second entry
        far = registry.get("far")
        assert far is not None and far.status == "ok" and far.path == str(outside)
        ghost = registry.get("ghost")
        assert ghost is not None and ghost.status == "missing" and ghost.path is None
        assert "set local.models.ghost.path" in (ghost.error or "")
        ollama = registry.get("llama3.2:1b")
        assert ollama is not None and (ollama.format, ollama.backend, ollama.status) == ("ollama", "ollama", "ok")
        with pytest.raises(ModelUnavailable, match="ollama"):
            await ollama.meta()
        gone = registry.get("gone")
        assert gone is not None and gone.status == "missing"

        # Reload without the overrides: settings apply at once, names at the rescan.
        plain = local(models)
        registry.reconfigure(plain)
        best = registry.get("best")
        assert best is not None and best.priority == 0 and not best.configured
        assert registry.get("ghost") is None
        result = await registry.scan()
        assert names(result) == {"updated": {"q8-m"}, "unchanged": {"m"}, "removed": {"far", "gone"}}
        assert registry.get("best") is None
        assert [e.name for e in registry.list()] == ["m", "q8-m"]
        assert {r.name for r in await db.call(models_store.all_rows)} == {"m", "q8-m"}

    with_registry(tmp_path, cfg, body)


def test_config_path_may_claim_a_name_held_by_a_missing_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    old = write_tiny_llama(models / "chat.gguf")
    new = write_tiny_llama(models / "chat-v2.gguf", seed=1)

    async def body(registry: Registry, db: Database) -> None:
        await registry.scan()
        old.unlink()
        await registry.scan()
        assert registry.get("chat") is not None and registry.get("chat").status == "missing"  # type: ignore[union-attr]
        registry.reconfigure(local(models, chat=LocalModelConfig(path=str(new))))
        assert names(await registry.scan()) == {"updated": {"chat"}}
        chat = registry.get("chat")
        assert chat is not None and chat.status == "ok" and chat.path == str(new)
        assert [e.name for e in registry.list()] == ["chat"]

    with_registry(tmp_path, local(models), body)


def test_a_dropped_model_dir_is_forgotten(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_tiny_llama(a / "one.gguf")
    write_tiny_llama(b / "two.gguf", seed=1)

    async def body(registry: Registry, db: Database) -> None:
        await registry.scan()
        registry.reconfigure(local(a))
        assert names(await registry.scan()) == {"unchanged": {"one"}, "removed": {"two"}}
        assert [e.name for e in registry.list()] == ["one"]
        # A model dir that does not exist (an unmounted disk) makes its models missing, not forgotten.
        shutil.rmtree(a)
        assert names(await registry.scan()) == {"missing": {"one"}}

    with_registry(tmp_path, local(a, b), body)


def test_registry_state_survives_a_restart(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_tiny_llama(models / "m.gguf", n_layer=3)
    write_corrupt(models / "bad.gguf")

    async def first(registry: Registry, db: Database) -> list[tuple[object, ...]]:
        await registry.scan()
        return [(e.name, e.path, e.status, e.error, e.created_at, e.layer_count) for e in registry.list()]

    async def second(registry: Registry, db: Database) -> None:
        assert registry.list() == []
        await registry.load()
        assert [(e.name, e.path, e.status, e.error, e.created_at, e.layer_count)
                for e in registry.list()] == before
        entry = registry.get("m")
        assert entry is not None
        meta = await entry.meta()  # not parsed in this process yet: parsed now, then cached
        assert meta.block_count == 3
        assert await entry.meta() is meta
        assert names(await registry.scan()) == {"unchanged": {"m", "bad"}}

    before = with_registry(tmp_path, local(models), first)
    with_registry(tmp_path, local(models), second)


def test_timer_rescans_and_reconfigure_wakes_it(tmp_path: Path) -> None:
    models, more = tmp_path / "models", tmp_path / "more"
    models.mkdir()
    more.mkdir()
    write_tiny_llama(more / "late.gguf")

    async def wait_for(registry: Registry, name: str) -> bool:
        for _ in range(1000):
            if registry.get(name) is not None:
                return True
            await asyncio.sleep(0.01)
        return False

    async def body(registry: Registry, db: Database) -> None:
        registry.start()  # every 0.05 s
        write_tiny_llama(models / "new.gguf")
        assert await wait_for(registry, "new")
        # With scan_interval_seconds = 0 only a reload (or a caller) triggers a scan.
        idle = LocalConfig(model_dirs=(str(models), str(more)), scan_interval_seconds=0)
        registry.reconfigure(idle)
        assert await wait_for(registry, "late")
        write_tiny_llama(models / "idle.gguf")
        await asyncio.sleep(0.2)
        assert registry.get("idle") is None
        await registry.stop()
        registry.reconfigure(idle)  # stopped: no scan
        await asyncio.sleep(0.1)
        assert registry.get("idle") is None
        await registry.scan()
        assert registry.get("idle") is not None

    with_registry(tmp_path, LocalConfig(model_dirs=(str(models),), scan_interval_seconds=0.05), body)


@pytest.mark.parametrize(("toml", "problem"), [
    ('[local]\nmodel_dirs = ["models"]', "local.model_dirs: expected an absolute path"),
    ("[local]\nscan_interval_seconds = -1", "local.scan_interval_seconds: expected a number of at least 0"),
    ('[local.models.a]\npath = "/m/x.gguf"\n[local.models.b]\npath = "/m/x.gguf"',
     "local: models.a and models.b: both have path '/m/x.gguf'"),
    ('[local.models.a]\nbackend = "vllm"', "local.models.a.backend: expected one of 'llamacpp' | 'ollama'"),
    ("[local.models.a]\nctx = 0", "local.models.a.ctx: expected a number greater than 0"),
    ("[local.models.a]\ngpu_layers = -1", "local.models.a.gpu_layers: expected an integer of at least 0"),
    ("[local.models.a]\nextra_args = [1]", "local.models.a.extra_args[0]: expected a string"),
    ('[local.models."bad\\tname"]\npriority = 1', "local: models.'bad\\tname': expected a model name"),
    ('[local.models.a]\nsize = 1', "local.models.a.size: unknown key"),
])
def test_invalid_local_config(toml: str, problem: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_text("[security.tls]\nenabled = false\n" + toml, "config.toml", env={})
    assert problem in str(info.value)

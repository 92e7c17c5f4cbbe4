"""One registry scan, computed off the event loop: find GGUF files, name them, parse what changed.

:func:`plan_scan` is synchronous (directory walks, ``stat`` and GGUF parsing): the registry
runs it in an executor and then writes the returned rows in one transaction.

Naming. A model's name comes from its file name: the lowercased stem with a split suffix
(``-00001-of-00003``) removed and every run of characters outside ``[a-z0-9._-]`` replaced
by ``-``. A ``[local.models.NAME]`` with ``path`` names that file ``NAME``. Names are unique:
a file keeps the name it had at the previous scan while that is still free, and a new file
whose name is taken gets ``<parent dir>-<name>``, then ``<parent dir>-<name>-2``, ``-3``...
Files are visited in a fixed order (configured paths, then each of ``model_dirs`` in order,
each walked in sorted order), so the same files and the same history give the same names.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from ..config.local import LocalConfig
from ..store.models import ModelRow
from .gguf_meta import GgufError, GgufMeta, read_gguf_meta

log = logging.getLogger(__name__)

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_UNSAFE = re.compile(r"[^a-z0-9._-]+")
#: (total size in bytes, newest mtime in ns) of a model's file or files.
Fingerprint = tuple[int, int]


@dataclass(frozen=True)
class ScanResult:
    """What one scan changed, as model names. Every file found is in exactly one of
    ``added``, ``updated``, ``corrupt`` and ``unchanged``."""

    #: Files seen for the first time, parsed successfully.
    added: tuple[str, ...] = ()
    #: Known files that were parsed again (changed size or mtime, or back after missing),
    #: or renamed, and are usable.
    updated: tuple[str, ...] = ()
    #: Files that disappeared since the previous scan (or a configured path that does not exist).
    missing: tuple[str, ...] = ()
    #: Files that were parsed in this scan and are not usable GGUF models.
    corrupt: tuple[str, ...] = ()
    #: Files with the size and mtime of the previous scan: not parsed again.
    unchanged: tuple[str, ...] = ()
    #: Entries forgotten because their path is no longer under ``model_dirs`` nor configured.
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScanPlan:
    """Rows to write, rows to delete, and the metadata parsed along the way."""

    upserts: tuple[ModelRow, ...]
    delete_ids: tuple[int, ...]
    result: ScanResult
    metas: Mapping[str, tuple[Fingerprint, GgufMeta]] = field(repr=False)


def derive_name(path: str) -> str:
    """The name a file gets before collisions are resolved: ``/m/Llama-3 8B.Q4_K_M.gguf`` -> ``llama-3-8b.q4_k_m``."""
    base = os.path.basename(path)
    if (m := _SPLIT.match(base)) is not None:
        stem = m["stem"]
    else:
        stem = base[:-len(".gguf")] if base.lower().endswith(".gguf") else base
    return _safe(stem) or "model"


def name_candidates(path: str) -> Iterator[str]:
    """Names to try for ``path``, in order: the derived name, then qualified by its parent dir."""
    base = derive_name(path)
    yield base
    parent = _safe(os.path.basename(os.path.dirname(path)))
    qualified = f"{parent}-{base}" if parent else base
    yield qualified
    n = 2
    while True:
        yield f"{qualified}-{n}"
        n += 1


def plan_scan(cfg: LocalConfig, previous: Mapping[str, ModelRow], now: float | None = None) -> ScanPlan:
    """Compare the files on disk with ``previous`` (rows by path) and return what to write."""
    now = time.time() if now is None else now
    forced = {os.path.normpath(m.path): name for name, m in cfg.models.items() if m.path is not None}
    found, duplicates = _discover(cfg, forced)
    names = _assign_names(found, forced, previous)
    claimed = set(names.values()) | set(forced.values())

    upserts: list[ModelRow] = []
    deletes: list[int] = []
    metas: dict[str, tuple[Fingerprint, GgufMeta]] = {}
    out: dict[str, list[str]] = {k: [] for k in ("added", "updated", "missing", "corrupt", "unchanged", "removed")}

    for path, fp in found.items():
        prev, name = previous.get(path), names[path]
        if prev is not None and prev.status != "missing" and (prev.size_bytes, prev.mtime_ns) == fp:
            upserts.append(replace(prev, name=name, last_scanned=now))
            out["updated" if prev.name != name else "unchanged"].append(name)
            continue
        row, meta = _parse(path, fp, name, prev, now)
        upserts.append(row)
        if meta is not None:
            metas[path] = (fp, meta)
        out["corrupt" if row.status == "corrupt" else "added" if prev is None else "updated"].append(name)

    for path, prev in previous.items():
        if path in found:
            continue
        in_scope = path in forced or _under(path, cfg.model_dirs)
        if not in_scope or path in duplicates:
            # No longer configured nor under model_dirs, or the same file is now reached by
            # another path (a configured path, a symlink): forget it.
            deletes.append(prev.id)  # type: ignore[arg-type]
            out["removed"].append(prev.name)
            continue
        if prev.name in claimed and path not in forced:
            deletes.append(prev.id)  # type: ignore[arg-type]  # its name now belongs to another file
            continue
        name = forced.get(path, prev.name)
        if prev.status != "missing" or prev.name != name:
            upserts.append(replace(prev, name=name, status="missing", error="file not found"))
            out["missing"].append(name)
    for path, name in forced.items():
        if path in duplicates:
            log.warning("model scan: local.models.%s: %s is a file already found under another path", name, path)
        elif path not in found and path not in previous:
            upserts.append(ModelRow(None, name, path, "gguf", None, None, None, None, None, None, now, now,
                                    "missing", "file not found"))
            out["missing"].append(name)
    result = ScanResult(**{k: tuple(v) for k, v in out.items()})
    return ScanPlan(tuple(upserts), tuple(deletes), result, metas)


def _discover(cfg: LocalConfig, forced: Mapping[str, str]) -> tuple[dict[str, Fingerprint], set[str]]:
    """Existing model files (first shards and unsplit files) in naming order, one path per
    file; and the paths skipped because they lead to a file already found."""
    candidates = list(forced)
    for directory in cfg.model_dirs:
        candidates += _walk(os.path.normpath(directory))
    found: dict[str, Fingerprint] = {}
    duplicates: set[str] = set()
    seen: set[str] = set()
    for path in candidates:
        real = os.path.realpath(path)
        if real in seen:
            if path not in found:
                duplicates.add(path)
            continue
        fp = fingerprint(path)
        if fp is not None:
            seen.add(real)
            found[path] = fp
    return found, duplicates


def _walk(directory: str) -> list[str]:
    def report(exc: OSError) -> None:
        log.warning("model scan: cannot read %s: %s", exc.filename or directory, exc.strerror or exc)

    out: list[str] = []
    for root, dirs, files in os.walk(directory, onerror=report):
        dirs.sort()
        for fname in sorted(files):
            if not fname.lower().endswith(".gguf"):
                continue
            m = _SPLIT.match(fname)
            if m is None or int(m["no"]) == 1:
                out.append(os.path.join(root, fname))
    return out


def fingerprint(path: str) -> Fingerprint | None:
    """Size and mtime of a model file, all shards of a split model together; None if it is not a file."""
    paths = [path]
    m = _SPLIT.match(os.path.basename(path))
    if m is not None and int(m["no"]) == 1:
        count, stem = int(m["count"]), os.path.join(os.path.dirname(path), m["stem"])
        paths += [f"{stem}-{n:05d}-of-{count:05d}.gguf" for n in range(2, count + 1)]
    size = mtime = 0
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            if i == 0:
                return None
            continue  # a missing shard: the parse reports it
        if i == 0 and not stat.S_ISREG(st.st_mode):
            return None
        size += st.st_size
        mtime = max(mtime, st.st_mtime_ns)
    return size, mtime


def _assign_names(found: Mapping[str, Fingerprint], forced: Mapping[str, str],
                  previous: Mapping[str, ModelRow]) -> dict[str, str]:
    names = {p: n for p, n in forced.items() if p in found}
    taken = set(forced.values())
    for path in found:  # files keep their previous (derived) name while it is free
        prev = previous.get(path)
        if path not in names and prev is not None and prev.name not in taken and _is_derived(prev.name, path):
            names[path] = prev.name
            taken.add(prev.name)
    for path in found:
        if path not in names:
            names[path] = next(n for n in name_candidates(path) if n not in taken)
            taken.add(names[path])
    return names


def _is_derived(name: str, path: str) -> bool:
    """Whether ``name`` is one of :func:`name_candidates` of ``path`` (not a configured name)."""
    candidates = name_candidates(path)
    base, qualified = next(candidates), next(candidates)
    return name in (base, qualified) or re.fullmatch(re.escape(qualified) + r"-[0-9]+", name) is not None


def _parse(path: str, fp: Fingerprint, name: str, prev: ModelRow | None,
           now: float) -> tuple[ModelRow, GgufMeta | None]:
    created = prev.created_at if prev is not None else now
    row = ModelRow(prev.id if prev else None, name, path, "gguf", fp[0], fp[1], None, None, None, None,
                   created, now, "corrupt", None)
    try:
        meta = read_gguf_meta(path)
    except GgufError as exc:
        log.warning("model scan: %s", exc)
        problem = exc.problem if exc.path == path else f"{exc.path}: {exc.problem}"  # a shard's problem
        return replace(row, error=problem), None
    except Exception as exc:  # one bad file must never stop the scan
        log.exception("model scan: unexpected error reading %s", path)
        return replace(row, error=f"unexpected error: {type(exc).__name__}: {exc}"), None
    return replace(row, architecture=meta.architecture, layer_count=meta.block_count,
                   context_length=meta.context_length, quantization=meta.quantization,
                   status="ok", metadata=dict(meta.metadata)), meta


def _under(path: str, directories: tuple[str, ...]) -> bool:
    return any(path.startswith(os.path.join(os.path.normpath(d), "")) for d in directories)


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text.lower()).strip("-.")

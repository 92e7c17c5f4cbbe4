"""Read what the memory estimator and the model registry need from a GGUF file.

The file is memory-mapped by ``gguf.GGUFReader``: only the header, the key/value section and
the tensor index are touched, never the weights. Reading is synchronous; callers on the
event loop run it in an executor.

A model split by ``llama-gguf-split`` (``name-00001-of-00003.gguf``) is read as a whole when
the first shard is named: the tensors of every shard are counted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securellm_bridge.errors import BridgeError

if TYPE_CHECKING:
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.gguf_reader import ReaderField

# `gguf` (and numpy) are imported where a file is read, not here: a daemon without local
# models never pays their ~15 MB of memory.

#: Arrays up to this many elements are kept in ``GgufMeta.metadata`` as lists; longer ones
#: (the token list, merges, scores) are replaced by ``{"array_of": type, "length": n}``.
MAX_INLINE_ARRAY = 64

_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
_SHARD_NAME = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# llama.cpp adds this bit to general.file_type when it guessed the type itself.
_FTYPE_GUESSED = 1024
# Decoding a malformed file fails in numpy/gguf with one of these.
_PARSE_ERRORS = (ValueError, IndexError, KeyError, OverflowError, TypeError, AttributeError)


class GgufError(BridgeError):
    """The file is missing, unreadable, not GGUF, truncated or inconsistent."""

    code = "invalid_model_file"

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: not a usable GGUF model: {problem}")


@dataclass(frozen=True)
class GgufMeta:
    """The shape and size of a GGUF model. All sizes are bytes."""

    path: str
    architecture: str
    name: str | None
    block_count: int
    context_length: int
    embedding_length: int
    head_count: int
    #: The largest per-layer KV head count; see ``head_count_kv_per_layer``.
    head_count_kv: int
    #: One entry per layer (models such as OpenELM vary it by layer).
    head_count_kv_per_layer: tuple[int, ...]
    #: Per-head widths of K and V (``attention.key_length``/``value_length``, else n_embd/n_head).
    key_length: int
    value_length: int
    feed_forward_length: int | None
    vocab_size: int
    #: ``general.file_type``, or None when the file does not say.
    file_type: int | None
    #: ``F16``, ``Q4_K_M``...: from ``file_type``, else the dominant 2-D tensor type.
    quantization: str
    #: ``layer_bytes[i]`` is the sum of the ``blk.i.*`` tensor sizes.
    layer_bytes: tuple[int, ...]
    token_embd_bytes: int
    #: ``output.weight`` (absent with tied embeddings) and ``output_norm.weight``.
    output_bytes: int
    #: Everything outside ``blk.N.*``: token_embd, output, output_norm and any other tensor.
    non_layer_bytes: int
    total_tensor_bytes: int
    #: True when there is no ``output.weight``: llama.cpp then reuses ``token_embd``.
    tied_embeddings: bool
    tensor_count: int
    file_size: int
    #: JSON-able key/value pairs of the header (see ``MAX_INLINE_ARRAY`` for arrays).
    metadata: Mapping[str, Any] = field(repr=False, hash=False, compare=False)


def read_gguf_meta(path: Path | str) -> GgufMeta:
    """Read ``path`` (memory-mapped) and return its :class:`GgufMeta`; :class:`GgufError` if unusable."""
    path = Path(path)
    first = _open(path)
    kv = _metadata(path, first)
    readers = [first]
    shards = _int_or_none(kv.get("split.count"))
    if shards is not None and shards > 1:
        readers += [_open(p) for p in _shard_paths(path, kv, shards)]
    try:
        return _build(path, kv, readers)
    except _PARSE_ERRORS as exc:
        raise GgufError(path, f"inconsistent header ({exc})") from exc


def quantization_name(file_type: int) -> str | None:
    """``LlamaFileType`` value -> llama.cpp's short name (``15`` -> ``Q4_K_M``), None if unknown."""
    from gguf import LlamaFileType

    try:
        member = LlamaFileType(file_type & ~_FTYPE_GUESSED)
    except ValueError:
        return None
    if member is LlamaFileType.GUESSED:
        return None
    return member.name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _open(path: Path) -> GGUFReader:
    from gguf import GGUFReader

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise GgufError(path, f"cannot read it ({exc.strerror or exc})") from exc
    if size < 8:
        raise GgufError(path, f"only {size} bytes, shorter than a GGUF header")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GgufError(path, f"bad magic {magic!r}, expected b'GGUF'")
    try:
        reader = GGUFReader(path)
    except OSError as exc:
        raise GgufError(path, f"cannot read it ({exc.strerror or exc})") from exc
    except _PARSE_ERRORS as exc:
        raise GgufError(path, f"truncated or malformed ({exc})") from exc
    for tensor in reader.tensors:
        end = tensor.data_offset + tensor.n_bytes
        if end > size:
            raise GgufError(path, f"truncated: tensor {tensor.name} ends at byte {end}, "
                                  f"the file has {size}")
    return reader


def _shard_paths(path: Path, kv: Mapping[str, Any], count: int) -> list[Path]:
    match = _SHARD_NAME.match(path.name)
    if _int_or_none(kv.get("split.no")) != 0 or match is None or int(match["count"]) != count:
        raise GgufError(path, f"shard of a {count}-way split model: name the first shard, "
                              "<stem>-00001-of-NNNNN.gguf")
    return [path.with_name(f"{match['stem']}-{n:05d}-of-{count:05d}.gguf")
            for n in range(2, count + 1)]


def _build(path: Path, kv: Mapping[str, Any], readers: list[GGUFReader]) -> GgufMeta:
    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GgufError(path, "general.architecture is missing")

    def need(key: str) -> int:
        value = _int_or_none(kv.get(f"{arch}.{key}"))
        if value is None or value <= 0:
            raise GgufError(path, f"{arch}.{key} is missing or not a positive integer")
        return value

    n_layer = need("block_count")
    n_embd = need("embedding_length")
    n_head = _first_int(kv.get(f"{arch}.attention.head_count"))
    if n_head is None or n_head <= 0:
        raise GgufError(path, f"{arch}.attention.head_count is missing")
    kv_heads = _per_layer(kv.get(f"{arch}.attention.head_count_kv"), n_layer, default=n_head)
    key_length = _int_or_none(kv.get(f"{arch}.attention.key_length")) or n_embd // n_head
    value_length = _int_or_none(kv.get(f"{arch}.attention.value_length")) or n_embd // n_head

    layer_bytes = [0] * n_layer
    token_embd = output = total = count = 0
    has_output = False
    from gguf import GGMLQuantizationType

    elements_by_type: dict[GGMLQuantizationType, int] = {}
    for reader in readers:
        for tensor in reader.tensors:
            n_bytes = int(tensor.n_bytes)
            total += n_bytes
            count += 1
            if len(tensor.shape) >= 2:
                ttype = GGMLQuantizationType(tensor.tensor_type)
                elements_by_type[ttype] = elements_by_type.get(ttype, 0) + int(tensor.n_elements)
            if (m := _LAYER_TENSOR.match(tensor.name)) is not None:
                index = int(m.group(1))
                if index >= n_layer:
                    raise GgufError(path, f"tensor {tensor.name} is beyond "
                                          f"{arch}.block_count={n_layer}")
                layer_bytes[index] += n_bytes
            elif tensor.name.startswith("token_embd."):
                token_embd += n_bytes
            elif tensor.name.startswith(("output.", "output_norm.")):
                output += n_bytes
                has_output = has_output or tensor.name.startswith("output.")
    if count == 0:
        raise GgufError(path, "the file has no tensors")

    file_type = _int_or_none(kv.get("general.file_type"))
    quant = quantization_name(file_type) if file_type is not None else None
    if quant is None:
        quant = max(elements_by_type, key=elements_by_type.__getitem__).name \
            if elements_by_type else "unknown"
    tokens = kv.get("tokenizer.ggml.tokens")
    vocab = (_int_or_none(kv.get(f"{arch}.vocab_size"))
             or (tokens["length"] if isinstance(tokens, dict) else len(tokens or []))
             or _embd_rows(readers))
    name = kv.get("general.name")
    return GgufMeta(
        path=str(path), architecture=arch, name=name if isinstance(name, str) else None,
        block_count=n_layer, context_length=need("context_length"), embedding_length=n_embd,
        head_count=n_head, head_count_kv=max(kv_heads), head_count_kv_per_layer=kv_heads,
        key_length=key_length, value_length=value_length,
        feed_forward_length=_first_int(kv.get(f"{arch}.feed_forward_length")),
        vocab_size=vocab, file_type=file_type, quantization=quant,
        layer_bytes=tuple(layer_bytes), token_embd_bytes=token_embd, output_bytes=output,
        non_layer_bytes=total - sum(layer_bytes), total_tensor_bytes=total,
        tied_embeddings=not has_output, tensor_count=count,
        file_size=sum(int(r.data.size) for r in readers), metadata=kv,
    )


def _embd_rows(readers: list[GGUFReader]) -> int:
    for tensor in readers[0].tensors:
        if tensor.name == "token_embd.weight" and len(tensor.shape) >= 2:
            return int(tensor.shape[1])
    return 0


def _metadata(path: Path, reader: GGUFReader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        for key, fld in reader.fields.items():
            if not key.startswith("GGUF."):
                out[key] = _value(fld)
    except _PARSE_ERRORS as exc:
        raise GgufError(path, f"malformed key/value pair ({exc})") from exc
    return out


def _value(fld: ReaderField) -> Any:
    from gguf import GGUFValueType

    main = fld.types[0]
    if main == GGUFValueType.STRING:
        return _text(fld.parts[-1])
    if main != GGUFValueType.ARRAY:
        return _scalar(fld.parts[-1][0])
    sub = fld.types[-1]
    if len(fld.data) > MAX_INLINE_ARRAY or sub == GGUFValueType.ARRAY:
        return {"array_of": sub.name.lower(), "length": len(fld.data)}
    if sub == GGUFValueType.STRING:
        return [_text(fld.parts[i]) for i in fld.data]
    return [_scalar(fld.parts[i][0]) for i in fld.data]


def _text(part: np.ndarray) -> str:
    return bytes(part).decode("utf-8", errors="replace")


def _scalar(value: np.generic) -> bool | int | float:
    import numpy as np

    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return float(value)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _first_int(value: Any) -> int | None:
    """A scalar, or the largest entry of a per-layer array (0 entries mark layers without it)."""
    if isinstance(value, list):
        ints = [v for v in value if _int_or_none(v) is not None]
        return max(ints) if ints else None
    return _int_or_none(value)


def _per_layer(value: Any, n_layer: int, *, default: int) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) == n_layer and all(
            _int_or_none(v) is not None for v in value):
        return tuple(value)
    scalar = _int_or_none(value)
    return (scalar if scalar is not None and scalar > 0 else default,) * n_layer

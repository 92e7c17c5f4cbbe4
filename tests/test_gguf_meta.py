"""read_gguf_meta on real GGUF files written by the gguf package (no llama-server needed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from securellm_bridge.errors import BridgeError
from securellm_bridge.local.gguf_meta import (
    MAX_INLINE_ARRAY,
    GgufError,
    quantization_name,
    read_gguf_meta,
)

from .gguf_models import VOCAB_SIZE, write_corrupt, write_tiny_llama, write_truncated


def test_reads_the_shape_of_a_tiny_llama(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", n_layer=3, n_embd=128, n_head=8, n_head_kv=2,
                            n_ff=352, n_ctx=512, name="shape-check")
    meta = read_gguf_meta(path)
    assert (meta.architecture, meta.name) == ("llama", "shape-check")
    assert (meta.block_count, meta.context_length, meta.embedding_length) == (3, 512, 128)
    assert (meta.head_count, meta.head_count_kv, meta.head_count_kv_per_layer) == (8, 2, (2, 2, 2))
    assert (meta.key_length, meta.value_length, meta.feed_forward_length) == (16, 16, 352)
    assert meta.vocab_size == VOCAB_SIZE == 356
    assert (meta.file_type, meta.quantization) == (1, "F16")
    assert meta.tensor_count == 2 + 9 * 3 + 1
    assert meta.tied_embeddings is False
    assert meta.file_size == path.stat().st_size
    assert meta.path == str(path)


def test_layer_bytes_add_up_to_the_tensor_data(tmp_path: Path) -> None:
    path = write_tiny_llama(tmp_path / "m.gguf", n_layer=4, n_embd=128, n_ff=256, dtype="f16")
    meta = read_gguf_meta(path)
    reader = GGUFReader(path)
    by_hand = [sum(int(t.n_bytes) for t in reader.tensors if t.name.startswith(f"blk.{i}."))
               for i in range(4)]
    assert list(meta.layer_bytes) == by_hand
    # One layer of F16 by hand: q, k, v, o are 128x128, gate/up/down 128x256, norms 2x128 F32.
    assert meta.layer_bytes[0] == 2 * (4 * 128 * 128 + 3 * 128 * 256) + 4 * 2 * 128
    assert meta.token_embd_bytes == 2 * 128 * VOCAB_SIZE
    assert meta.output_bytes == 2 * 128 * VOCAB_SIZE + 4 * 128
    assert meta.non_layer_bytes == meta.token_embd_bytes + meta.output_bytes
    assert sum(meta.layer_bytes) + meta.non_layer_bytes == meta.total_tensor_bytes
    # The tensor data is the tail of the file, each tensor padded to the 32-byte alignment.
    data_bytes = meta.file_size - reader.data_offset
    assert meta.total_tensor_bytes <= data_bytes < meta.total_tensor_bytes + 32 * meta.tensor_count


@pytest.mark.parametrize(("dtype", "file_type", "name"),
                         [("f32", 0, "F32"), ("f16", 1, "F16"), ("q8_0", 7, "Q8_0")])
def test_quantization_from_file_type(tmp_path: Path, dtype: str, file_type: int, name: str) -> None:
    meta = read_gguf_meta(write_tiny_llama(tmp_path / "m.gguf", dtype=dtype))  # type: ignore[arg-type]
    assert (meta.file_type, meta.quantization) == (file_type, name)


def test_quantization_derived_from_tensors_without_file_type(tmp_path: Path) -> None:
    meta = read_gguf_meta(write_tiny_llama(tmp_path / "m.gguf", dtype="q8_0", with_file_type=False))
    assert meta.file_type is None
    assert meta.quantization == "Q8_0"
    assert "general.file_type" not in meta.metadata


def test_quantization_names() -> None:
    assert quantization_name(15) == "Q4_K_M"
    assert quantization_name(32) == "BF16"
    assert quantization_name(15 | 1024) == "Q4_K_M"  # llama.cpp's "guessed" flag
    assert quantization_name(4) is None  # a removed type
    assert quantization_name(9999) is None


def test_metadata_is_json_and_summarises_big_arrays(tmp_path: Path) -> None:
    meta = read_gguf_meta(write_tiny_llama(tmp_path / "m.gguf"))
    encoded = json.loads(json.dumps(meta.metadata))
    assert encoded["tokenizer.ggml.tokens"] == {"array_of": "string", "length": VOCAB_SIZE}
    assert encoded["tokenizer.ggml.scores"] == {"array_of": "float32", "length": VOCAB_SIZE}
    assert encoded["llama.block_count"] == 2
    assert encoded["tokenizer.ggml.add_bos_token"] is True
    assert encoded["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert not any(key.startswith("GGUF.") for key in encoded)
    assert "chat_template" not in repr(meta)  # the header stays out of logs


def test_short_arrays_and_per_layer_kv_heads(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_head_count(4)
    writer.add_head_count_kv([1, 2])
    writer.add_array("test.small", [1, 2, 3])
    writer.add_array("test.big", list(range(MAX_INLINE_ARRAY + 1)))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(32, dtype=np.float32))
    writer.add_tensor("blk.1.attn_norm.weight", np.ones(32, dtype=np.float32))
    writer.add_tensor("token_embd.weight", np.ones((10, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = read_gguf_meta(path)
    assert meta.head_count_kv_per_layer == (1, 2)
    assert meta.head_count_kv == 2
    assert meta.metadata["test.small"] == [1, 2, 3]
    assert meta.metadata["test.big"] == {"array_of": "int32", "length": MAX_INLINE_ARRAY + 1}
    assert meta.vocab_size == 10  # from token_embd: no vocab_size key, no token list
    assert meta.tied_embeddings is True
    assert meta.feed_forward_length is None
    assert meta.quantization == "F16"


def test_bad_magic(tmp_path: Path) -> None:
    path = write_corrupt(tmp_path / "bad.gguf")
    with pytest.raises(GgufError, match=r"bad\.gguf: .*bad magic b'GGUX'") as err:
        read_gguf_meta(path)
    assert isinstance(err.value, BridgeError)
    assert err.value.path == str(path)


def test_truncated_in_the_tensor_data(tmp_path: Path) -> None:
    path = write_truncated(tmp_path / "cut.gguf")
    with pytest.raises(GgufError, match=r"cut\.gguf: not a usable GGUF model: truncated"):
        read_gguf_meta(path)


def test_truncated_after_the_last_tensor_starts(tmp_path: Path) -> None:
    full = write_tiny_llama(tmp_path / "full.gguf")
    path = write_truncated(tmp_path / "cut.gguf", keep_bytes=full.stat().st_size - 1)
    with pytest.raises(GgufError, match="truncated"):
        read_gguf_meta(path)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16,
                                     b"not a model at all"])
def test_not_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(GgufError, match=r"x\.gguf: not a usable GGUF model"):
        read_gguf_meta(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GgufError, match="cannot read it"):
        read_gguf_meta(tmp_path / "absent.gguf")


def test_every_cut_and_flipped_header_byte_gives_gguf_error(tmp_path: Path) -> None:
    """Damage anywhere must end in GgufError (or a valid read), never in another exception."""
    good = write_tiny_llama(tmp_path / "good.gguf").read_bytes()
    header_end = GGUFReader(tmp_path / "good.gguf").data_offset
    rng = random.Random(7)
    path = tmp_path / "damaged.gguf"
    failures = 0
    for i in range(100):
        data = bytearray(good)
        if i % 2:
            data = data[:rng.randrange(len(good))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(4, header_end)] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            read_gguf_meta(path)
        except GgufError:
            failures += 1
    assert failures >= 50  # every cut fails; most flips do too


def test_split_model_is_read_as_a_whole(tmp_path: Path) -> None:
    shards = []
    for no in range(2):
        path = tmp_path / f"big-{no + 1:05d}-of-00002.gguf"
        writer = GGUFWriter(path, "llama")
        writer.add_uint16("split.no", no)
        writer.add_uint16("split.count", 2)
        if no == 0:
            writer.add_block_count(2)
            writer.add_context_length(64)
            writer.add_embedding_length(32)
            writer.add_head_count(4)
        writer.add_tensor(f"blk.{no}.attn_norm.weight", np.ones(32 * (no + 1), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        shards.append(path)
    meta = read_gguf_meta(shards[0])
    assert meta.layer_bytes == (128, 256)
    assert meta.tensor_count == 2
    with pytest.raises(GgufError, match="name the first shard"):
        read_gguf_meta(shards[1])
    shards[1].unlink()
    with pytest.raises(GgufError, match="cannot read it"):
        read_gguf_meta(shards[0])

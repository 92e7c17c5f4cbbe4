"""Tiny random-weight GGUF models that a real llama-server loads and chats with.

The shape, tokenizer and chat template follow /work/shared/recipes/llama-server.md: a
``llama`` architecture, a 356-token SentencePiece vocabulary (5 control tokens, 256 byte
tokens, U+2581 and printable ASCII without the space) and a ChatML template. The text such
a model writes is garbage, but loading, tokenising, chat, streaming and embeddings are real.

Weights come from a seeded generator, so the same arguments give a byte-identical file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType
from gguf.quants import quantize

Dtype = Literal["f32", "f16", "q8_0"]

CONTROL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
SPACE_PIECE = "\u2581"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_FILE_TYPES = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
}
_LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                  "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """The recipe's 356-token vocabulary: pieces, scores and token types."""
    tokens: list[str] = list(CONTROL_TOKENS)
    types: list[int] = [TokenType.CONTROL] * len(CONTROL_TOKENS)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    normal = [SPACE_PIECE] + [chr(c) for c in range(0x21, 0x7F)]
    tokens += normal
    types += [TokenType.NORMAL] * len(normal)
    scores = [0.0] * (len(tokens) - len(normal)) + [-float(i) for i in range(len(normal))]
    return tokens, scores, types


VOCAB_SIZE = len(vocabulary()[0])


def _weight(rng: np.random.Generator, shape: tuple[int, ...], dtype: Dtype
            ) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    values = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    if dtype == "f32":
        return values, None
    if dtype == "f16":
        return values.astype(np.float16), None
    return quantize(values, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0


def write_tiny_llama(path: Path | str, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                     n_head_kv: int = 4, n_ff: int = 128, n_ctx: int = 256, dtype: Dtype = "f16",
                     name: str = "tiny-llama", seed: int = 0, with_file_type: bool = True) -> Path:
    """Write a random-weight llama GGUF and return its path.

    Norm vectors stay F32 whatever ``dtype`` is, as in real conversions. ``with_file_type``
    False omits ``general.file_type`` (older converters did), to exercise readers that must
    derive the quantization from the tensor types.
    """
    if dtype not in _FILE_TYPES:
        raise ValueError(f"dtype must be one of {sorted(_FILE_TYPES)}, not {dtype!r}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must divide by n_head, and n_head by n_head_kv")
    path = Path(path)
    head_dim = n_embd // n_head
    tokens, scores, types = vocabulary()
    rng = np.random.default_rng(seed)

    writer = GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    if with_file_type:
        writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    def add(tensor_name: str, shape: tuple[int, ...]) -> None:
        if len(shape) == 1:
            writer.add_tensor(tensor_name, np.ones(shape, dtype=np.float32))
            return
        data, raw_dtype = _weight(rng, shape, dtype)
        writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)

    kv_dim = n_head_kv * head_dim
    add("token_embd.weight", (len(tokens), n_embd))
    shapes = {
        "attn_norm": (n_embd,), "attn_q": (n_embd, n_embd), "attn_k": (kv_dim, n_embd),
        "attn_v": (kv_dim, n_embd), "attn_output": (n_embd, n_embd), "ffn_norm": (n_embd,),
        "ffn_gate": (n_ff, n_embd), "ffn_up": (n_ff, n_embd), "ffn_down": (n_embd, n_ff),
    }
    for layer in range(n_layer):
        for part in _LAYER_TENSORS:
            add(f"blk.{layer}.{part}.weight", shapes[part])
    add("output_norm.weight", (n_embd,))
    add("output.weight", (len(tokens), n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_corrupt(path: Path | str) -> Path:
    """A tiny model whose only defect is its magic: ``GGUX`` instead of ``GGUF``."""
    path = write_tiny_llama(path)
    with path.open("r+b") as f:
        f.write(b"GGUX")
    return path


def write_truncated(path: Path | str, *, keep_bytes: int | None = None) -> Path:
    """A tiny model cut short: by default half-way, which is inside the tensor data."""
    path = write_tiny_llama(path)
    size = path.stat().st_size
    keep = size // 2 if keep_bytes is None else keep_bytes
    if not 0 <= keep < size:
        raise ValueError(f"keep_bytes must be in [0, {size}), not {keep}")
    with path.open("r+b") as f:
        f.truncate(keep)
    return path

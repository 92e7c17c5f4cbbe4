"""Predict how much GPU and host memory llama-server needs for a GGUF model.

The model mirrors llama.cpp (as vendored by llama-cpp-python 0.3.36) and is calibrated
against the buffer sizes the real ``llama-server`` logs at load time; docs/PERFORMANCE.md
("Memory estimator vs llama-server") has the measurements and the reasoning.

* **Context.** llama.cpp rounds ``n_ctx`` up to a multiple of 256. With ``--parallel N``
  and no ``--kv-unified`` it keeps N streams of ``pad256(n_ctx / N)`` cells each, so the
  total can exceed ``n_ctx``; with a unified cache it keeps one stream of ``n_ctx`` cells.
  (llama-server without ``--parallel`` runs 4 slots on a unified cache.)
* **KV cache.** per layer: ``cells x (row(type_k, n_head_kv*key_length) + row(type_v,
  n_head_kv*value_length))``, on the device of that layer.
* **Weights.** ``-ngl g`` offloads the output layer first, then the last ``g-1`` repeating
  layers; ``token_embd`` always stays on the CPU (a tied output duplicates it on the GPU).
* **Compute buffer.** The worst-case graph of one micro-batch of ``T = min(cells, n_ubatch)``
  tokens: the attention mask, plus the peak of live F32 activations (see
  :func:`compute_buffer_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal


from securellm_bridge.errors import Conflict, InvalidRequest
from securellm_bridge.local.gguf_meta import GgufMeta

MIB = 1024 * 1024
#: llama.cpp pads the context (and each stream's share of it) to this many cells.
CTX_PAD = 256
#: KV cache element types llama-server accepts for ``-ctk``/``-ctv``.
KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
#: llama-server's default micro-batch (``-ub``).
DEFAULT_UBATCH = 512
#: Resident memory of the llama-server process besides its buffers (binary text, heap);
#: measured 12 MiB with the tiny models, rounded up.
DEFAULT_CPU_OVERHEAD = 16 * MIB
#: CUDA context, cuBLAS workspace and allocator slack on the GPU once anything is offloaded.
#: Not measured here (the calibration host has no GPU): a conservative, documented guess.
DEFAULT_GPU_OVERHEAD = 512 * MIB
_F32 = 4


class InsufficientMemory(Conflict):
    """No ``gpu_layers``/context combination fits the memory budget."""

    code = "insufficient_memory"


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes llama-server will hold, split by where they live."""

    weights_gpu: int
    weights_cpu: int
    kv_cache_gpu: int
    kv_cache_cpu: int
    compute_gpu: int
    compute_cpu: int
    overhead_gpu: int
    overhead_cpu: int
    #: KV cells allocated (all streams) and the micro-batch the compute buffer is sized for.
    kv_cells: int
    ubatch: int

    @property
    def kv_cache(self) -> int:
        return self.kv_cache_gpu + self.kv_cache_cpu

    @property
    def compute_buffer(self) -> int:
        return self.compute_gpu + self.compute_cpu

    @property
    def overhead(self) -> int:
        return self.overhead_gpu + self.overhead_cpu

    @property
    def total_gpu(self) -> int:
        return self.weights_gpu + self.kv_cache_gpu + self.compute_gpu + self.overhead_gpu

    @property
    def total_cpu(self) -> int:
        return self.weights_cpu + self.kv_cache_cpu + self.compute_cpu + self.overhead_cpu

    def as_dict(self) -> dict[str, int]:
        """All fields and totals, JSON-able."""
        out = asdict(self)
        for name in ("kv_cache", "compute_buffer", "overhead", "total_gpu", "total_cpu"):
            out[name] = getattr(self, name)
        return out


def kv_row_bytes(kv_type: str, n_elements: int) -> int:
    """Bytes of one KV row of ``n_elements`` values stored as ``kv_type``."""
    if kv_type not in KV_TYPES:
        raise InvalidRequest(f"kv_type must be one of {', '.join(KV_TYPES)}, not {kv_type!r}",
                             param="kv_type")
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # imported on use, see gguf_meta

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kv_type.upper()]]
    if n_elements % block:
        raise InvalidRequest(f"kv_type {kv_type} needs a KV width divisible by {block}, "
                             f"the model has {n_elements}", param="kv_type")
    return n_elements // block * size


def kv_layout(n_ctx: int, parallel: int, kv_unified: bool) -> tuple[int, int]:
    """``(cells per stream, streams)`` as llama.cpp sizes them for ``-c n_ctx -np parallel``."""
    if n_ctx < 1 or parallel < 1:
        raise InvalidRequest("n_ctx and parallel must be at least 1", param="n_ctx")
    padded = _pad(n_ctx, CTX_PAD)
    if kv_unified or parallel == 1:
        return padded, 1
    return _pad(padded // parallel, CTX_PAD), parallel


def compute_buffer_bytes(meta: GgufMeta, *, cells_per_stream: int, ubatch: int, n_seq: int,
                         flash_attn: bool, kv_type: str) -> int:
    """Peak of llama.cpp's worst-case graph allocation for one micro-batch of ``ubatch`` tokens.

    Calibrated on the CPU build (docs/PERFORMANCE.md): with ``e = n_embd``, ``f = n_ff``,
    activations peak at ``4*T*max(6e, 4e + 3f)`` when ``f > 2e`` (the case for real LLMs,
    matched to the byte) and ``4*T*max(6e, 5e + 2f)`` otherwise (an upper bound; the
    allocator sometimes fits one tensor into freed space). Without flash attention the
    ``n_head x cells x T`` F32 score matrix is materialised: ``KQ + 4*T*7e``. The mask is
    ``cells x T`` F16 (F32 without flash attention). A quantized KV cache adds one
    ``T x n_embd_kv`` F32 conversion tensor.
    """
    e = meta.embedding_length
    f = meta.feed_forward_length or 4 * e
    t = ubatch
    act = max(6 * e, 4 * e + 3 * f) if f > 2 * e else max(6 * e, 5 * e + 2 * f)
    peak = _F32 * t * act
    if not flash_attn:
        scores = _F32 * cells_per_stream * t * meta.head_count
        peak = max(scores + _F32 * t * 7 * e, peak + _F32 * t * e)
    mask = (2 if flash_attn else _F32) * cells_per_stream * t
    inputs = _F32 * (2 * t + n_seq)  # token ids, positions, output ids
    logits = _F32 * n_seq * meta.vocab_size
    total = max(peak, logits + _F32 * t * e) + mask + inputs
    if kv_type not in ("f32", "f16", "bf16"):
        total += _F32 * t * meta.head_count_kv * max(meta.key_length, meta.value_length)
    return total


def estimate(meta: GgufMeta, *, n_ctx: int, gpu_layers: int, parallel: int = 1,
             kv_type: str = "f16", kv_unified: bool = False, flash_attn: bool = True,
             ubatch: int = DEFAULT_UBATCH, cpu_overhead: int = DEFAULT_CPU_OVERHEAD,
             gpu_overhead: int = DEFAULT_GPU_OVERHEAD) -> MemoryEstimate:
    """Memory for ``llama-server -m meta.path -c n_ctx -ngl gpu_layers -np parallel``.

    ``gpu_layers`` follows ``-ngl``: 0 keeps everything on the CPU, ``block_count + 1`` (or
    more) offloads everything. ``flash_attn`` True matches ``-fa auto`` on backends that
    support it (CPU and CUDA do); a quantized ``kv_type`` forces it on, as llama.cpp does.
    """
    if gpu_layers < 0:
        raise InvalidRequest("gpu_layers must be >= 0", param="gpu_layers")
    if ubatch < 1:
        raise InvalidRequest("ubatch must be >= 1", param="ubatch")
    quantized_kv = kv_type not in ("f32", "f16", "bf16")
    flash_attn = flash_attn or quantized_kv
    n_layer = meta.block_count
    cells_per_stream, streams = kv_layout(n_ctx, parallel, kv_unified)
    cells = cells_per_stream * streams
    k_row = [kv_row_bytes(kv_type, h * meta.key_length) for h in meta.head_count_kv_per_layer]
    v_row = [kv_row_bytes(kv_type, h * meta.value_length) for h in meta.head_count_kv_per_layer]
    kv_per_layer = [cells * (k + v) for k, v in zip(k_row, v_row, strict=True)]

    offloaded = min(gpu_layers, n_layer + 1)
    output_on_gpu = offloaded >= 1
    first_gpu_layer = n_layer - max(0, offloaded - 1)
    gpu_layer_ids = range(first_gpu_layer, n_layer)

    weights_gpu = sum(meta.layer_bytes[i] for i in gpu_layer_ids)
    weights_cpu = meta.total_tensor_bytes - weights_gpu
    if output_on_gpu:
        weights_gpu += meta.output_bytes
        weights_cpu -= meta.output_bytes
        if meta.tied_embeddings:
            weights_gpu += meta.token_embd_bytes  # llama.cpp duplicates token_embd as output
    kv_gpu = sum(kv_per_layer[i] for i in gpu_layer_ids)
    kv_cpu = sum(kv_per_layer) - kv_gpu

    t = min(cells, ubatch)
    compute = compute_buffer_bytes(meta, cells_per_stream=cells_per_stream, ubatch=t,
                                   n_seq=parallel, flash_attn=flash_attn, kv_type=kv_type)
    host_output = _F32 * parallel * meta.vocab_size  # the logits buffer is always host memory
    if not output_on_gpu:
        compute_gpu, compute_cpu = 0, compute
    elif first_gpu_layer == 0:
        # Everything but the token embedding lookup runs on the GPU; the host keeps its result.
        compute_gpu, compute_cpu = compute, _F32 * t * meta.embedding_length
    else:
        compute_gpu, compute_cpu = compute, compute
    return MemoryEstimate(
        weights_gpu=weights_gpu, weights_cpu=weights_cpu, kv_cache_gpu=kv_gpu,
        kv_cache_cpu=kv_cpu, compute_gpu=compute_gpu, compute_cpu=compute_cpu + host_output,
        overhead_gpu=gpu_overhead if output_on_gpu else 0, overhead_cpu=cpu_overhead,
        kv_cells=cells, ubatch=t,
    )


def auto_params(meta: GgufMeta, *, budget_bytes: int, headroom_bytes: int,
                max_ctx: int | None = None, fixed_gpu_layers: int | None = None,
                fixed_ctx: int | None = None, parallel: int = 1,
                target: Literal["gpu", "cpu"] = "gpu", kv_type: str = "f16") -> tuple[int, int]:
    """The most ``gpu_layers``, then the largest context, whose memory plus headroom fits.

    ``target`` "gpu" bounds :attr:`MemoryEstimate.total_gpu` (the host is assumed to have
    room); "cpu" is for hosts without a GPU: ``gpu_layers`` is 0 and ``total_cpu`` is bounded.
    The context is searched in multiples of 256 (what llama.cpp allocates anyway) from 256 up
    to ``max_ctx`` (default: the model's training context), and returned capped at
    ``max_ctx``. Raises :class:`InsufficientMemory` when even the smallest choice does not fit.
    """
    limit = budget_bytes - headroom_bytes
    ceiling = max_ctx if max_ctx is not None else meta.context_length
    if ceiling < 1:
        raise InvalidRequest("max_ctx must be at least 1", param="max_ctx")
    layer_choices = (range(min(fixed_gpu_layers, meta.block_count + 1), -1, -1)
                     if fixed_gpu_layers is not None else range(meta.block_count + 1, -1, -1))
    if target == "cpu":
        layer_choices = range(0, -1, -1)

    def used(layers: int, ctx: int) -> int:
        est = estimate(meta, n_ctx=ctx, gpu_layers=layers, parallel=parallel, kv_type=kv_type)
        return est.total_cpu if target == "cpu" else est.total_gpu

    smallest_ctx = fixed_ctx if fixed_ctx is not None else min(ceiling, CTX_PAD)
    for layers in layer_choices:
        if used(layers, smallest_ctx) > limit:
            if fixed_gpu_layers is not None:
                break  # fewer layers than asked for is not an option
            continue
        if fixed_ctx is not None:
            return layers, fixed_ctx
        return layers, _largest_ctx(lambda ctx: used(layers, ctx) <= limit, ceiling)
    need = used(0 if target == "cpu" else (fixed_gpu_layers or 0), smallest_ctx)
    raise InsufficientMemory(
        f"{meta.name or meta.path}: needs {need / MIB:.0f} MiB of {target.upper()} memory at "
        f"context {smallest_ctx}, but the budget leaves {max(limit, 0) / MIB:.0f} MiB "
        f"({budget_bytes / MIB:.0f} MiB minus {headroom_bytes / MIB:.0f} MiB headroom)")


def _largest_ctx(fits: Callable[[int], bool], ceiling: int) -> int:
    """Binary search over multiples of 256 in [256, ceiling]; ``fits(256)`` is known true."""
    low, high = 1, _pad(ceiling, CTX_PAD) // CTX_PAD  # in units of 256 cells
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid * CTX_PAD):
            low = mid
        else:
            high = mid - 1
    return min(low * CTX_PAD, ceiling)


def _pad(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple

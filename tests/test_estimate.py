"""The memory estimator: formulas by hand, placement by -ngl, golden values, auto_params."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from securellm_bridge.errors import InvalidRequest
from securellm_bridge.local.estimate import (
    MIB,
    InsufficientMemory,
    auto_params,
    estimate,
    kv_layout,
    kv_row_bytes,
)
from securellm_bridge.local.gguf_meta import GgufMeta, read_gguf_meta

from .gguf_models import VOCAB_SIZE, write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> GgufMeta:
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    return read_gguf_meta(write_tiny_llama(path, n_layer=4, n_embd=128, n_head=8, n_head_kv=2,
                                           n_ff=352, n_ctx=4096))


def synthetic(*, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int,
              n_vocab: int = VOCAB_SIZE, n_ctx: int = 8192, tied: bool = False) -> GgufMeta:
    """An F16 llama described without a file, for shapes too big to write in a fast test."""
    head = n_embd // n_head
    kv = n_head_kv * head
    layer = 2 * (2 * n_embd * n_embd + 2 * kv * n_embd + 3 * n_embd * n_ff) + 4 * 2 * n_embd
    embd = 2 * n_vocab * n_embd
    output = (0 if tied else embd) + 4 * n_embd
    return GgufMeta(
        path="synthetic.gguf", architecture="llama", name="synthetic", block_count=n_layer,
        context_length=n_ctx, embedding_length=n_embd, head_count=n_head,
        head_count_kv=n_head_kv, head_count_kv_per_layer=(n_head_kv,) * n_layer,
        key_length=head, value_length=head, feed_forward_length=n_ff, vocab_size=n_vocab,
        file_type=1, quantization="F16", layer_bytes=(layer,) * n_layer, token_embd_bytes=embd,
        output_bytes=output, non_layer_bytes=embd + output,
        total_tensor_bytes=layer * n_layer + embd + output, tied_embeddings=tied,
        tensor_count=2 + 9 * n_layer + (0 if tied else 1), file_size=0, metadata={},
    )


def test_kv_cache_by_hand(tiny: GgufMeta) -> None:
    # 4 layers x 512 cells x (K + V) x n_head_kv 2 x head_dim 16 x 2 bytes (f16)
    est = estimate(tiny, n_ctx=512, gpu_layers=0)
    assert est.kv_cache == 4 * 512 * 2 * (2 * 16) * 2
    assert est.kv_cells == 512
    # q8_0 stores 32 values in 34 bytes.
    est = estimate(tiny, n_ctx=512, gpu_layers=0, kv_type="q8_0")
    assert est.kv_cache == 4 * 512 * 2 * 34
    est = estimate(tiny, n_ctx=512, gpu_layers=0, kv_type="f32")
    assert est.kv_cache == 4 * 512 * 2 * 32 * 4


def test_context_is_padded_to_256(tiny: GgufMeta) -> None:
    assert estimate(tiny, n_ctx=300, gpu_layers=0).kv_cells == 512
    assert estimate(tiny, n_ctx=300, gpu_layers=0).kv_cache == \
        estimate(tiny, n_ctx=512, gpu_layers=0).kv_cache


def test_kv_layout_matches_llama_cpp() -> None:
    # Measured with llama-server: -c 1000 -np 3 allocates 3 streams of 512 cells.
    assert kv_layout(1000, 3, kv_unified=False) == (512, 3)
    assert kv_layout(1024, 4, kv_unified=False) == (256, 4)
    assert kv_layout(1024, 4, kv_unified=True) == (1024, 1)
    assert kv_layout(100, 1, kv_unified=False) == (256, 1)
    with pytest.raises(InvalidRequest):
        kv_layout(0, 1, kv_unified=False)


def test_kv_row_bytes_rejects_unknown_types_and_bad_widths() -> None:
    assert kv_row_bytes("q4_0", 64) == 2 * 18
    with pytest.raises(InvalidRequest, match="kv_type must be one of"):
        kv_row_bytes("q3_k", 64)
    with pytest.raises(InvalidRequest, match="divisible by 32"):
        kv_row_bytes("q8_0", 48)


def test_cpu_only_puts_everything_on_the_host(tiny: GgufMeta) -> None:
    est = estimate(tiny, n_ctx=1024, gpu_layers=0)
    assert est.total_gpu == 0
    assert est.weights_cpu == tiny.total_tensor_bytes
    assert est.kv_cache_cpu == est.kv_cache
    assert est.total_cpu == est.weights_cpu + est.kv_cache_cpu + est.compute_cpu + est.overhead_cpu


def test_ngl_offloads_the_output_layer_first_then_the_last_layers(tiny: GgufMeta) -> None:
    one = estimate(tiny, n_ctx=1024, gpu_layers=1)
    assert one.weights_gpu == tiny.output_bytes
    assert one.kv_cache_gpu == 0
    assert one.compute_gpu > 0 and one.overhead_gpu > 0
    two = estimate(tiny, n_ctx=1024, gpu_layers=2)
    assert two.weights_gpu == tiny.output_bytes + tiny.layer_bytes[3]
    assert two.kv_cache_gpu == two.kv_cache // 4
    full = estimate(tiny, n_ctx=1024, gpu_layers=5)
    assert full.weights_cpu == tiny.token_embd_bytes  # the input layer always stays on the CPU
    assert full.kv_cache_cpu == 0
    assert full.compute_cpu < full.compute_gpu
    assert estimate(tiny, n_ctx=1024, gpu_layers=999) == full
    for est in (one, two, full):
        assert est.weights_gpu + est.weights_cpu == tiny.total_tensor_bytes


def test_tied_embeddings_are_duplicated_on_the_gpu() -> None:
    meta = synthetic(n_layer=2, n_embd=256, n_ff=704, n_head=4, n_head_kv=4, tied=True)
    full = estimate(meta, n_ctx=512, gpu_layers=3)
    assert full.weights_gpu == sum(meta.layer_bytes) + meta.output_bytes + meta.token_embd_bytes
    assert full.weights_cpu == meta.token_embd_bytes


def test_total_gpu_grows_with_layers_and_context(tiny: GgufMeta) -> None:
    previous = -1
    for layers in range(tiny.block_count + 2):
        total = estimate(tiny, n_ctx=1024, gpu_layers=layers).total_gpu
        assert total >= previous
        previous = total
    previous = -1
    for ctx in range(256, 4097, 256):
        total = estimate(tiny, n_ctx=ctx, gpu_layers=2).total_gpu
        assert total > previous
        previous = total


# (shape, n_ctx, llama-server flags as estimate() arguments, compute and KV MiB it logged)
# Measured with llama-server from llama-cpp-python 0.3.36 (llama.cpp 0c1e570), CPU build.
GOLDEN = [
    (dict(n_layer=8, n_embd=512, n_ff=1376, n_head=8, n_head_kv=8), 1024,
     dict(parallel=4, kv_unified=True), 13.07, 16.00),
    (dict(n_layer=8, n_embd=512, n_ff=1376, n_head=8, n_head_kv=8), 4096,
     dict(parallel=1), 16.07, 64.00),
    (dict(n_layer=8, n_embd=512, n_ff=1376, n_head=8, n_head_kv=8), 1024,
     dict(parallel=4, kv_unified=True, flash_attn=False), 25.01, 16.00),
    (dict(n_layer=2, n_embd=512, n_ff=4096, n_head=8, n_head_kv=8), 1024,
     dict(parallel=4, kv_unified=True), 29.01, 4.00),
    (dict(n_layer=2, n_embd=256, n_ff=512, n_head=16, n_head_kv=16), 1024,
     dict(parallel=4, kv_unified=True, flash_attn=False), 37.51, 2.00),
    (dict(n_layer=2, n_embd=256, n_ff=512, n_head=8, n_head_kv=2), 1024,
     dict(parallel=4, kv_unified=True), 5.01, 0.50),
    (dict(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=4), 1000,
     dict(parallel=3), 4.52, 3.00),
    (dict(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=4), 1024,
     dict(parallel=4, kv_unified=True, kv_type="q8_0"), 5.54, 1.06),
]


@pytest.mark.parametrize(("shape", "n_ctx", "flags", "compute_mib", "kv_mib"), GOLDEN)
def test_golden_values_from_llama_server(shape: dict[str, int], n_ctx: int,
                                         flags: dict[str, object], compute_mib: float,
                                         kv_mib: float) -> None:
    meta = synthetic(n_layer=shape["n_layer"], n_embd=shape["n_embd"], n_ff=shape["n_ff"],
                     n_head=shape["n_head"], n_head_kv=shape["n_head_kv"])
    est = estimate(meta, n_ctx=n_ctx, gpu_layers=0, **flags)  # type: ignore[arg-type]
    parallel = int(flags["parallel"])  # type: ignore[call-overload]
    compute = (est.compute_cpu - 4 * parallel * meta.vocab_size) / MIB  # minus the logits buffer
    assert est.kv_cache / MIB == pytest.approx(kv_mib, abs=0.005)
    # Never below the measurement (the log rounds to 0.01 MiB); at most 25 % above it.
    assert compute_mib - 0.01 <= compute <= compute_mib * 1.25 + 0.01


def test_as_dict_is_json(tiny: GgufMeta) -> None:
    est = estimate(tiny, n_ctx=512, gpu_layers=3)
    data = json.loads(json.dumps(est.as_dict()))
    assert data["total_gpu"] == est.total_gpu
    assert data["kv_cache"] == est.kv_cache_gpu + est.kv_cache_cpu
    assert set(f.name for f in dataclasses.fields(est)) <= set(data)


def test_estimate_rejects_nonsense(tiny: GgufMeta) -> None:
    with pytest.raises(InvalidRequest):
        estimate(tiny, n_ctx=512, gpu_layers=-1)
    with pytest.raises(InvalidRequest):
        estimate(tiny, n_ctx=512, gpu_layers=0, ubatch=0)


def fits(meta: GgufMeta, layers: int, ctx: int, budget: int, headroom: int) -> bool:
    return estimate(meta, n_ctx=ctx, gpu_layers=layers).total_gpu + headroom <= budget


@pytest.mark.parametrize("budget_mib", [516, 518, 520, 522, 524, 530, 2048])
def test_auto_params_picks_most_layers_then_largest_context(tiny: GgufMeta,
                                                            budget_mib: int) -> None:
    budget, headroom = budget_mib * MIB, 4 * MIB
    layers, ctx = auto_params(tiny, budget_bytes=budget, headroom_bytes=headroom)
    assert fits(tiny, layers, ctx, budget, headroom)
    assert ctx <= tiny.context_length
    if layers < tiny.block_count + 1:
        assert not fits(tiny, layers + 1, 256, budget, headroom)
    if ctx < tiny.context_length:
        assert not fits(tiny, layers, ctx + 256, budget, headroom)


def test_auto_params_is_monotonic_in_the_budget(tiny: GgufMeta) -> None:
    previous = (-1, -1)
    for budget_mib in range(512, 540):
        chosen = auto_params(tiny, budget_bytes=budget_mib * MIB, headroom_bytes=0)
        assert chosen >= previous  # more layers, or as many layers and at least as much context
        previous = chosen
    assert previous == (tiny.block_count + 1, tiny.context_length)


def test_auto_params_honours_fixed_values_and_max_ctx(tiny: GgufMeta) -> None:
    big = 4096 * MIB
    assert auto_params(tiny, budget_bytes=big, headroom_bytes=0, max_ctx=1000) == (5, 1000)
    assert auto_params(tiny, budget_bytes=big, headroom_bytes=0, fixed_ctx=768) == (5, 768)
    assert auto_params(tiny, budget_bytes=big, headroom_bytes=0, fixed_gpu_layers=2) == (2, 4096)
    assert auto_params(tiny, budget_bytes=big, headroom_bytes=0, max_ctx=100) == (5, 100)


def test_auto_params_fails_clearly_when_nothing_fits(tiny: GgufMeta) -> None:
    with pytest.raises(InsufficientMemory, match=r"needs \d+ MiB of GPU memory"):
        auto_params(tiny, budget_bytes=100 * MIB, headroom_bytes=0, fixed_gpu_layers=3)
    with pytest.raises(InsufficientMemory, match="CPU memory"):
        auto_params(tiny, budget_bytes=8 * MIB, headroom_bytes=0, target="cpu")


def test_auto_params_for_a_host_without_gpu(tiny: GgufMeta) -> None:
    budget = 40 * MIB
    layers, ctx = auto_params(tiny, budget_bytes=budget, headroom_bytes=0, target="cpu")
    assert layers == 0
    assert estimate(tiny, n_ctx=ctx, gpu_layers=0).total_cpu <= budget
    if ctx < tiny.context_length:
        assert estimate(tiny, n_ctx=ctx + 256, gpu_layers=0).total_cpu > budget


def test_tiny_model_file_is_what_the_estimator_reads(tmp_path: Path) -> None:
    meta = read_gguf_meta(write_tiny_llama(tmp_path / "m.gguf"))
    est = estimate(meta, n_ctx=256, gpu_layers=0)
    assert est.weights_cpu == meta.total_tensor_bytes == 256256

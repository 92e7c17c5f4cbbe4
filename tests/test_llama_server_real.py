"""The estimator against a real llama-server's load log, on tiny models that really chat.

Run: ``PYTHONPATH=daemon:ctl .venv/bin/pytest --slow -s tests/test_llama_server_real.py``
(``-s`` prints the per-component table that docs/PERFORMANCE.md records). The binary comes
from .ci/build-llama-server.sh; without it the test skips, or fails when ``$CI`` is set.

Tolerances, per component (llama-server logs MiB with two decimals, so +-0.005 MiB is noise):

* model and KV buffers: within 0.01 MiB (plus 0.5 % for the model's per-tensor alignment
  padding): both are exact formulas.
* compute buffer: never more than 0.01 MiB below the log, at most 25 % above it. Under-
  estimating would overcommit memory; the calibration (docs/PERFORMANCE.md) found the model
  exact for ``n_ff > 2 n_embd`` and up to 16 % high for narrower FFNs.
* logits output buffer: within 0.01 MiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from securellm_bridge.local.estimate import MIB, estimate
from securellm_bridge.local.gguf_meta import read_gguf_meta

from .gguf_models import Dtype, write_tiny_llama
from .llama import require_llama_server, run_llama_server

_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s*([\d.]+) MiB")


@dataclass(frozen=True)
class Case:
    id: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    ctx: int
    dtype: Dtype
    args: tuple[str, ...]
    parallel: int
    kv_unified: bool = False
    flash_attn: bool = True
    kv_type: str = "f16"


CASES = [
    # The recipe's shape with llama-server's defaults: 4 slots sharing a unified KV cache.
    Case("L2-e64-f16-ctx256", 2, 64, 4, 4, 128, 256, "f16", (), parallel=4, kv_unified=True),
    Case("L4-e128-f16-ctx512-np2", 4, 128, 4, 4, 352, 512, "f16", ("-np", "2"), parallel=2),
    Case("L4-e128-f32-ctx2048-nofa", 4, 128, 4, 4, 256, 2048, "f32", ("-np", "1", "-fa", "off"),
         parallel=1, flash_attn=False),
    Case("L6-e256-gqa-q8_0-ctx4096-kvq8", 6, 256, 8, 2, 704, 4096, "q8_0",
         ("-np", "1", "-ctk", "q8_0", "-ctv", "q8_0"), parallel=1, kv_type="q8_0"),
]


def logged_buffers(log: str) -> dict[str, float]:
    """MiB per kind (model, KV, compute, output), summed over backends (CPU_Mapped, CPU...)."""
    sizes: dict[str, float] = {}
    for _backend, kind, mib in _BUFFER.findall(log):
        sizes[kind] = sizes.get(kind, 0.0) + float(mib)
    return sizes


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_estimate_matches_llama_server_log(case: Case, tmp_path: Path) -> None:
    binary = require_llama_server()
    model = write_tiny_llama(tmp_path / f"{case.id}.gguf", n_layer=case.n_layer,
                             n_embd=case.n_embd, n_head=case.n_head, n_head_kv=case.n_head_kv,
                             n_ff=case.n_ff, n_ctx=case.ctx, dtype=case.dtype, name=case.id)
    meta = read_gguf_meta(model)
    est = estimate(meta, n_ctx=case.ctx, gpu_layers=0, parallel=case.parallel,
                   kv_unified=case.kv_unified, flash_attn=case.flash_attn, kv_type=case.kv_type)

    # -lv 4: at the default verbosity (3) llama-server does not print the buffer sizes.
    with run_llama_server(binary, model, ctx=case.ctx, log_path=tmp_path / "server.log",
                          extra_args=("-lv", "4", *case.args)) as server:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4})
        log = server.log()

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["prompt_tokens"] > 0
    assert 1 <= body["usage"]["completion_tokens"] <= 4

    measured = logged_buffers(log)
    assert set(measured) >= {"model", "KV", "compute"}, log[-3000:]
    logits = 4 * case.parallel * meta.vocab_size
    predicted = {
        "model": est.weights_cpu / MIB,
        "KV": est.kv_cache_cpu / MIB,
        "compute": (est.compute_cpu - logits) / MIB,
        "output": logits / MIB,
    }
    print(f"\n| {case.id} | " + " | ".join(
        f"{measured.get(kind, 0.0):.2f} / {predicted[kind]:.3f} "
        f"({_pct(predicted[kind], measured.get(kind, 0.0))})"
        for kind in ("model", "KV", "compute", "output")) + " |")

    assert predicted["model"] == pytest.approx(measured["model"], abs=0.01, rel=0.005)
    assert predicted["KV"] == pytest.approx(measured["KV"], abs=0.01)
    assert measured["compute"] - 0.01 <= predicted["compute"] <= measured["compute"] * 1.25 + 0.01
    assert predicted["output"] == pytest.approx(measured.get("output", 0.0), abs=0.01)


def _pct(predicted: float, measured: float) -> str:
    if measured == 0:
        return "n/a"
    return f"{(predicted - measured) / measured * 100:+.1f} %"


def test_logged_buffers_parses_the_real_wording() -> None:
    log = (
        "0.00.007.558 I load_tensors:   CPU_Mapped model buffer size =     0.24 MiB\n"
        "0.00.007.559 I load_tensors:   CPU_REPACK model buffer size =     1.50 MiB\n"
        "0.00.007.733 I llama_context:        CPU  output buffer size =     0.01 MiB\n"
        "0.00.007.750 I llama_kv_cache:        CPU KV buffer size =     0.12 MiB\n"
        "0.00.008.856 I sched_reserve:        CPU compute buffer size =     0.63 MiB\n"
    )
    assert logged_buffers(log) == {"model": 1.74, "output": 0.01, "KV": 0.12, "compute": 0.63}

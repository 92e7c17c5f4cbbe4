"""Micro-benchmark: per-request cost of DLP and prompt-injection screening.

Not a test. Run from the repository root:

    PYTHONPATH=daemon .venv/bin/python tests/benchmarks/bench_dlp.py

It builds a typical ~1 KB OpenAI chat body (a system prompt and a user question with some
numbers, code and punctuation), once clean and once with findings, and prints the best of
several runs in microseconds per body for each mode. Results go into docs/DLP.md.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from collections.abc import Callable
from typing import Any

from securellm_bridge.security import dlp, injection

ITERATIONS = 2000
REPEATS = 7

SYSTEM = ("You are a careful assistant for an internal engineering team. Answer concisely, "
          "cite the relevant documentation when you can, and say so when you are not sure.")
QUESTION = (
    "I'm working on a Python service that reads 3 CSV files of about 200 MB each and joins "
    "them on customer_id. The first version took 45 minutes on my laptop (16 GB RAM, 8 cores). "
    "I tried pandas with chunksize=100000 but memory still peaks at 12 GB. Could you suggest a "
    "better approach, maybe with polars or duckdb? In step 2 we compute a rolling 7-day "
    "average of order totals per customer and write Parquet partitioned by year and month, "
    "e.g. 2024/03. Here is the code: df = pd.read_csv(path, dtype={'customer_id': 'int64'}); "
    "df['ts'] = pd.to_datetime(df['ts']). Please keep the answer under 300 words and explain "
    "the trade-offs between the two libraries, including how each one handles schema "
    "inference and null values in integer columns. Thanks!"
)
FINDINGS = (
    " PS: the failing row is for jane.roe@example.com, phone +1 415-555-0132, card "
    "4111 1111 1111 1111, from host 192.0.2.10; our key is sk-proj-FAKEtestKEY_0000example-1111."
)


def _body(user: str) -> dict[str, Any]:
    return {"model": "local-llama", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
    ]}


def _best_us(fn: Callable[[dict[str, Any]], object], body: dict[str, Any]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        bodies = [copy.deepcopy(body) for _ in range(ITERATIONS)]  # redact modifies its body
        start = time.perf_counter()
        for b in bodies:
            fn(b)
        best = min(best, (time.perf_counter() - start) / ITERATIONS * 1e6)
    return best


def main() -> None:
    clean = _body(QUESTION)
    dirty = _body(QUESTION[: len(QUESTION) - len(FINDINGS)] + FINDINGS)
    cases: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
        ("dlp redact", lambda b: dlp.apply(b, "redact")),
        ("dlp block", lambda b: dlp.apply(b, "block")),
        ("injection screen", lambda b: injection.apply(b, "flag")),
        ("both (redact + flag)", lambda b: (dlp.apply(b, "redact"), injection.apply(b, "flag"))),
    ]
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"best of {REPEATS} x {ITERATIONS} bodies")
    for name, body in (("clean", clean), ("findings", dirty)):
        size = len(json.dumps(body).encode())
        print(f"{name} body ({size} bytes JSON), findings {dict(dlp.scan_chat_body(body))}")
        for label, fn in cases:
            print(f"  {label:<22}{_best_us(fn, body):8.1f} us")


if __name__ == "__main__":
    main()

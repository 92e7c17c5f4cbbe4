"""Prometheus counters of the audit writer, on the default registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter

RECORDS = Counter("securellm_audit_records", "Audit records written, by sink (journal or file).", ["sink"])
FALLBACK = Counter("securellm_audit_fallback",
                   "Audit records written to the JSONL file because journald was unavailable.")
ERRORS = Counter("securellm_audit_errors",
                 "Failed audit writes: a sink that raised, a state file that could not be saved, "
                 "or records still queued when the writer could not finish at shutdown.")

"""Prometheus counters of the audit trail, on the daemon's default registry (served at /metrics).

The writer process has no Prometheus: it reports what it wrote with each acknowledgement, and
the daemon adds that here (``supervisor.py``).
"""

from __future__ import annotations

from prometheus_client import Counter

RECORDS = Counter("securellm_audit_records", "Audit records written, by sink (journal or file).", ["sink"])
FALLBACK = Counter("securellm_audit_fallback",
                   "Audit records written to the JSONL file because journald was unavailable.")
ERRORS = Counter("securellm_audit_errors",
                 "Failed audit writes: a sink that raised, a state file that could not be saved, "
                 "records still unwritten when the writer could not finish at shutdown, or records "
                 "waiting while no writer process could be started.")
RESTARTS = Counter("securellm_audit_writer_restarts",
                   "Starts of a new audit writer process after the previous one died, or could not be started.")

"""Versioned schema migrations. Append only: never edit a migration that has shipped.

``PRAGMA user_version`` records how many have been applied.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: API keys (only the SHA-256 of a key is stored, never the key).
    """
    CREATE TABLE api_keys (
        id             TEXT PRIMARY KEY,
        key_sha256     TEXT NOT NULL UNIQUE,
        owner          TEXT NOT NULL,
        allowed_models TEXT NOT NULL DEFAULT '[]',
        created_at     REAL NOT NULL,
        last_used_at   REAL,
        revoked        INTEGER NOT NULL DEFAULT 0,
        revoked_at     REAL
    );
    """,
    # 2: per-key policy: rate limits and a spending budget (NULL: the configured default).
    """
    ALTER TABLE api_keys ADD COLUMN rpm INTEGER;
    ALTER TABLE api_keys ADD COLUMN tpm INTEGER;
    ALTER TABLE api_keys ADD COLUMN max_budget REAL;
    ALTER TABLE api_keys ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'month';
    """,
    # 3: usage per UTC day, API key ('' without one), provider and model.
    """
    CREATE TABLE usage_daily (
        day               TEXT NOT NULL,
        key_id            TEXT NOT NULL,
        provider          TEXT NOT NULL,
        model             TEXT NOT NULL,
        requests          INTEGER NOT NULL DEFAULT 0,
        prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost              REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (day, key_id, provider, model)
    ) WITHOUT ROWID;
    CREATE INDEX usage_daily_by_key ON usage_daily (key_id, day);
    """,
    # 4: per-key DLP mode override (NULL: [security.dlp] mode).
    """
    ALTER TABLE api_keys ADD COLUMN dlp_mode TEXT;
    """,
    # 5: local GGUF models found by the registry: one row per file, each with a unique name.
    """
    CREATE TABLE models (
        id             INTEGER PRIMARY KEY,
        name           TEXT NOT NULL UNIQUE,
        path           TEXT NOT NULL UNIQUE,
        format         TEXT NOT NULL DEFAULT 'gguf',
        size_bytes     INTEGER,
        mtime_ns       INTEGER,
        architecture   TEXT,
        layer_count    INTEGER,
        context_length INTEGER,
        quantization   TEXT,
        created_at     REAL NOT NULL,
        last_scanned   REAL NOT NULL,
        status         TEXT NOT NULL CHECK (status IN ('ok', 'missing', 'corrupt')),
        error          TEXT,
        metadata       TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 6: per-key routing strategy (NULL: [router] default_strategy).
    """
    ALTER TABLE api_keys ADD COLUMN strategy TEXT;
    """,
)

"""Persistent state in SQLite, accessed only from a dedicated thread (never the event loop)."""

from .db import Database

__all__ = ["Database"]

"""Routing: candidates for a model, strategies that order them, fallback, circuit breakers."""

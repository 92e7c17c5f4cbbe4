"""Upstream providers: transport-free protocol translation and stream framing.

* :mod:`.sse` — incremental Server-Sent Events and NDJSON parsers for streamed bodies, and
  the SSE encoder used towards clients.
* :mod:`.openai_shapes` — reading OpenAI requests and building OpenAI responses, shared by
  the translators so that every upstream answers clients in exactly the same shape.
* :mod:`.anthropic_translate` — OpenAI chat completions <-> Anthropic Messages API.
* :mod:`.ollama_translate` — OpenAI chat completions / embeddings <-> Ollama ``/api/*``.

Everything here is pure (dicts and bytes in, dicts and bytes out); the HTTP clients that
talk to upstreams live elsewhere.
"""

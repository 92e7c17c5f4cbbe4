"""securellm-bridge: a secure LLM gateway daemon for one server."""

__version__ = "0.1.0"

"""Local model backends: GGUF metadata, memory estimation and llama-server supervision."""

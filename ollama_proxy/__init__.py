"""ollama-proxy: Ollama's HTTP API, answered by cloud models (OpenRouter, OpenAI, ...)."""

__version__ = "0.1.0"

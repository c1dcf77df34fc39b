"""The ``twistd ollama-proxy`` plugin: a thin, lazy door to :mod:`ollama_proxy.tap`."""

from twisted.application.service import ServiceMaker

ollama_proxy = ServiceMaker(
    "ollama-proxy",
    "ollama_proxy.tap",
    "Ollama's HTTP API answered by cloud models (OpenRouter, OpenAI, ...).",
    "ollama-proxy",
)

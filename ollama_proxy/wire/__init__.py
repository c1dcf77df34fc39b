"""Pure translation between Ollama's, OpenAI's and Anthropic's shapes: no I/O, tested on its own."""

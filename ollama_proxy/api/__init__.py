"""The Klein apps (native ``/api`` and OpenAI-compatible ``/v1``), thin: parse, call the pipeline,
render; the relay that writes a stream to the client."""

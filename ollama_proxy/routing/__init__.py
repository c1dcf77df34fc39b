"""Many providers behind one endpoint: model catalogue and filter, router, dispatcher, retries,
circuit breakers, per-provider concurrency, provider slots, health checks and ``/api/ps``."""

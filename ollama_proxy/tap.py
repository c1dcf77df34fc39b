"""``twistd ollama-proxy``: command-line options and the service maker."""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from .config import ConfigError, load_config
from .service import ProxyService, makeService as build


class Options(usage.Options):
    """Options of ``twistd ollama-proxy``."""

    synopsis = "[--listen ENDPOINT]... [--config FILE] [--demo]"
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: $OLLAMA_PROXY_CONFIG)."],
    ]
    optFlags = [
        ["demo", None, "Add the built-in 'echo' provider: demo models that answer offline, deterministically."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Twisted server endpoint to listen on; may be repeated
        (default: $OLLAMA_HOST, else tcp:11434:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen


def makeService(options: Any) -> ProxyService:
    try:
        config = load_config(config_file=options["config"], listen=options["listen"], demo=bool(options["demo"]))
    except ConfigError as error:
        # twistd shows a traceback for exceptions; an operator wants one clear line.
        sys.stderr.write(f"ollama-proxy: configuration error: {error}\n")
        raise SystemExit(1) from None
    return build(config)

# Run with: twistd -n --pidfile= -y proxy.tac
# Configured like `twistd ollama-proxy`: the environment (OPENROUTER_API_KEY,
# OLLAMA_HOST, OLLAMA_PROXY_CONFIG, ...), and OLLAMA_PROXY_LISTEN for endpoints
# (several separated by spaces). SIGHUP reloads, SIGTERM drains, sd_notify works;
# logs use twistd's own observer (the plugin adds --log-format and redaction).
import functools
import os

from twisted.application.service import Application
from twisted.internet import reactor

from ollama_proxy.config import load_config
from ollama_proxy.daemon import DaemonService
from ollama_proxy.service import makeService

listen = os.environ.get("OLLAMA_PROXY_LISTEN", "").split()
load = functools.partial(load_config, listen=listen or None)
application = Application("ollama-proxy")
DaemonService(makeService(load(), reactor), reactor, load).setServiceParent(application)

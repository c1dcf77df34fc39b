# Run with: twistd -n --pidfile= -y proxy.tac
# Configured like `twistd ollama-proxy`: the environment (OPENROUTER_API_KEY,
# OLLAMA_HOST, OLLAMA_PROXY_CONFIG, ...), and OLLAMA_PROXY_LISTEN for endpoints
# (several separated by spaces), OLLAMA_PROXY_LOG_FORMAT (text or json). SIGHUP
# reloads, SIGTERM drains, sd_notify works; logs are redacted as with the plugin.
import functools
import os

from twisted.application.service import Application
from twisted.internet import reactor

from ollama_proxy.config.settings import load_config
from ollama_proxy.ops.daemon import DaemonService
from ollama_proxy.service import makeService
from ollama_proxy.tap import tac_foreground, tac_observer

listen = os.environ.get("OLLAMA_PROXY_LISTEN", "").split()
load = functools.partial(load_config, listen=listen or None)
config = load()
proxy = makeService(config, reactor)
application = Application("ollama-proxy")
observer = tac_observer(config, proxy.redactor, reactor)
DaemonService(proxy, reactor, load, log_observer=observer, foreground=tac_foreground()).setServiceParent(application)

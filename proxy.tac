# Run with: twistd -n --pidfile= -y proxy.tac
# Configured like `twistd ollama-proxy`: the environment (OPENROUTER_API_KEY,
# OLLAMA_HOST, OLLAMA_PROXY_CONFIG, ...), and OLLAMA_PROXY_LISTEN for endpoints
# (several separated by spaces).
import os

from twisted.application.service import Application

from ollama_proxy.config import load_config
from ollama_proxy.service import makeService

listen = os.environ.get("OLLAMA_PROXY_LISTEN", "").split()
application = Application("ollama-proxy")
makeService(load_config(listen=listen or None)).setServiceParent(application)

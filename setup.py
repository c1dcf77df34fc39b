from setuptools import find_packages, setup

setup(
    name="ollama-proxy",
    version="0.1.0",
    description="Ollama's HTTP API answered by cloud models (OpenRouter, OpenAI, ...), on Twisted.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # The checkout's root is the package root: an editable install (pip install -e) then puts it on
    # sys.path with a plain .pth file, and twistd finds twisted/plugins/ollama_proxy_plugin.py there
    # as it does in site-packages after a regular install (Twisted looks for plugins only in
    # twisted/plugins folders on sys.path; setuptools' import-hook editable mode has none).
    package_dir={"": "."},
    packages=find_packages(include=["ollama_proxy", "ollama_proxy.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/ollama_proxy_plugin.py"]},
    install_requires=[
        "twisted>=23.10",
        "treq>=23.11",
        "klein>=23.5",
        "service-identity>=23.1",
        "zope.interface>=6.0",
        "pyOpenSSL",
        "idna",
        # /metrics in the Prometheus text formats, each proxy with its own registry.
        "prometheus_client>=0.17",
        # The configuration file as one declared schema (typed Structs, ranges in Meta);
        # the same library can later encode and decode the hot path's JSON.
        "msgspec>=0.18",
        # The chat path's HTTP/1.1 responses parsed by llhttp (Node's parser) in C: framing
        # (chunked, Content-Length, close-delimited) that is right and costs little per read.
        "httptools>=0.6",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-timeout>=2.2",
            "ollama>=0.4",
            "openai>=1.40",
            # /v1/messages is proven with the official Anthropic SDK.
            "anthropic>=0.40",
            "hypothesis>=6",
            # tests/test_install.py builds the wheels pip would install (setuptools < 70.1 needs it).
            "wheel",
            # The ledger's tests run against a real PostgreSQL server too.
            "psycopg[binary]>=3.1",
        ],
        # A ledger shared by replicas on several machines: [ledger] url = "postgresql://...".
        "postgresql": ["psycopg[binary]>=3.1"],
        # The gates .ci/run applies before the tests (configured in pyproject.toml).
        "dev": ["ruff>=0.6", "mypy>=1.10", "mypy-zope>=1.0"],
    },
    entry_points={},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)

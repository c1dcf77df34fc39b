"""The upstream URL made once per path is the one treq would have sent."""

from __future__ import annotations

import pytest
from hyperlink import EncodedURL

from ollama_proxy.providers.http import upstream_url


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8080/v1/chat/completions",
        "https://openrouter.ai/api/v1/models",
        "https://bücher.example/v1/chat/completions",
        "http://host/a path/with%20escapes/ü/messages",
    ],
)
def test_the_prepared_url_is_what_treq_would_send(text):
    prepared = upstream_url(text)
    sent = EncodedURL.from_text(text).to_uri().to_text()
    assert isinstance(prepared, EncodedURL)
    # treq sends url.to_uri().to_text() of whatever URL object it is given.
    assert prepared.to_uri().to_text() == sent
    assert prepared.to_uri() is prepared  # made once: nothing left to encode per request

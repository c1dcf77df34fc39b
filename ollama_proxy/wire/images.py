"""Ollama's base64 images as OpenAI image parts (pure functions, no I/O).

Ollama clients send bare base64 without a media type; OpenAI-style providers want
a ``data:`` URI naming one. The type is read from the image's first bytes, since a
wrong one makes providers reject or misread the picture.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ollama_proxy.errors import BadRequest

# (offset, magic bytes, media type); the first match wins.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (8, b"WEBP", "image/webp"),  # after "RIFF" and a length
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (4, b"ftypavif", "image/avif"),
    (4, b"ftypheic", "image/heic"),
    (4, b"ftypheix", "image/heic"),
    (4, b"ftypmif1", "image/heif"),
)


def sniff_media_type(data: bytes) -> str | None:
    """The image media type its magic bytes announce, or ``None``."""
    for offset, magic, media_type in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if media_type == "image/webp" and data[:4] != b"RIFF":
                continue
            return media_type
    return None


def decode_base64(text: str, where: str) -> tuple[str, bytes]:
    """``text`` without whitespace, and its bytes; a 400 naming ``where`` when it is not base64."""
    cleaned = "".join(text.split())
    try:
        return cleaned, base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where} is not valid base64 image data") from None


def image_data_uri(value: Any, where: str) -> str:
    """One Ollama ``images`` entry (base64, or already a data URI) as a data URI."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{where} must be a base64 string")
    if value.startswith("data:"):
        # Some clients send a data URI where Ollama wants bare base64: take the payload.
        head, _, payload = value.partition(",")
        if ";base64" not in head:
            raise BadRequest(f"{where} is not valid base64 image data")
        value = payload
    encoded, data = decode_base64(value, where)
    media_type = sniff_media_type(data)
    if media_type is None:
        raise BadRequest(f"invalid image input: {where} is not a PNG, JPEG, GIF, WebP, BMP, TIFF, AVIF or HEIC image")
    return f"data:{media_type};base64,{encoded}"


def image_parts(images: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI ``image_url`` content parts for an Ollama ``images`` list."""
    if images is None:
        return []
    if not isinstance(images, list):
        raise BadRequest(f"{where} must be a list of base64 strings")
    return [
        {"type": "image_url", "image_url": {"url": image_data_uri(v, f"{where}[{i}]")}} for i, v in enumerate(images)
    ]

"""The built-in offline provider: real PNG/WebP images drawn with Pillow.

Deterministic: the same prompt, seed, model and output index give the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random

from PIL import Image, ImageDraw

from worker.providers.base import (
    BytesOutput,
    GenerationRequest,
    GenerationResult,
    OnCreated,
    Output,
    Provider,
    ProviderFailed,
)

MAX_SIDE = 4096
FORMATS = {"png": "PNG", "webp": "WEBP"}


def _rng(request: GenerationRequest, index: int) -> random.Random:
    material = f"{request.model_key}\0{request.prompt}\0{request.seed}\0{index}".encode()
    return random.Random(hashlib.sha256(material).digest())


def render(request: GenerationRequest, index: int) -> bytes:
    """One output image, encoded as the model's ``format`` (png or webp)."""
    width = int(request.params.get("width", 256))
    height = int(request.params.get("height", 256))
    fmt = str(request.params.get("format", "png")).lower()
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ProviderFailed(f"width and height must be 1..{MAX_SIDE}", code="invalid_params")
    if fmt not in FORMATS:
        raise ProviderFailed(f"format must be one of {sorted(FORMATS)}", code="invalid_params")
    rng = _rng(request, index)
    background = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(1, width + 1), y0 + rng.randrange(1, height + 1)
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    buffer = io.BytesIO()
    # lossless WebP and fixed PNG settings keep the bytes reproducible.
    if fmt == "webp":
        image.save(buffer, format="WEBP", lossless=True)
    else:
        image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


# Images up to this many pixels render on the event loop (about 0.1 ms): a thread hop costs
# more than that, and a thread running Pillow's Python code holds the GIL that the event loop
# waits for after each of its own system calls (see the README's Performance section).
INLINE_MAX_PIXELS = 64 * 64


def _is_small(request: GenerationRequest) -> bool:
    try:
        width = int(request.params.get("width", 256))
        height = int(request.params.get("height", 256))
    except (TypeError, ValueError):
        return False  # render() refuses it, in a thread like any other
    return width * height <= INLINE_MAX_PIXELS


class LocalProvider(Provider):
    """Renders offline; optional simulated latency and failure rate for testing."""

    name = "local"

    def __init__(self, *, latency_s: float = 0.0, failure_rate: float = 0.0) -> None:
        self.latency_s = latency_s
        self.failure_rate = failure_rate

    async def generate(
        self, request: GenerationRequest, *, prediction_id: str | None, on_created: OnCreated
    ) -> GenerationResult:
        """Render every output (in a thread unless small); nothing to resume, so
        ``prediction_id`` is unused."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.failure_rate and random.random() < self.failure_rate:
            raise ProviderFailed("the local model failed (simulated)", code="model_failed")
        outputs: list[Output]
        if _is_small(request):
            outputs = [BytesOutput(render(request, i)) for i in range(request.num_outputs)]
        else:
            outputs = [
                BytesOutput(await asyncio.to_thread(render, request, i))
                for i in range(request.num_outputs)
            ]
        return GenerationResult(outputs)

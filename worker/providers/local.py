"""The built-in offline provider: real PNG/WebP images drawn with Pillow, and short H.264 MP4
clips encoded with PyAV (``local/clip``, ref ``clip``).

Deterministic: the same prompt, seed, model, params and output index give the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random

import av
from PIL import Image, ImageDraw

from worker.providers.base import (
    BytesOutput,
    GenerationRequest,
    GenerationResult,
    OnCreated,
    OnQueuePosition,
    Output,
    Provider,
    ProviderFailed,
    no_queue,
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


CLIP_REF = "clip"
CLIP_MAX_SIDE = 512
CLIP_MAX_FPS = 30
CLIP_MAX_DURATION_S = 6.0


def _clip_params(request: GenerationRequest) -> tuple[int, int, int, float]:
    width = int(request.params.get("width", 256))
    height = int(request.params.get("height", 256))
    fps = int(request.params.get("fps", 12))
    duration_s = float(request.params.get("duration_s", 2.0))
    if not (16 <= width <= CLIP_MAX_SIDE and 16 <= height <= CLIP_MAX_SIDE
            and width % 2 == 0 and height % 2 == 0):
        raise ProviderFailed(f"width and height must be even, 16..{CLIP_MAX_SIDE}",
                             code="invalid_params")
    if not 1 <= fps <= CLIP_MAX_FPS:
        raise ProviderFailed(f"fps must be 1..{CLIP_MAX_FPS}", code="invalid_params")
    if not 0.5 <= duration_s <= CLIP_MAX_DURATION_S:
        raise ProviderFailed(f"duration_s must be 0.5..{CLIP_MAX_DURATION_S:g}",
                             code="invalid_params")
    return width, height, fps, duration_s


def render_clip(request: GenerationRequest, index: int) -> bytes:
    """One short H.264 MP4: shapes drifting over a background, from prompt and seed."""
    width, height, fps, duration_s = _clip_params(request)
    rng = _rng(request, index)
    background = tuple(rng.randrange(256) for _ in range(3))
    shapes = [
        (rng.randrange(width), rng.randrange(height), rng.randrange(8, max(9, width // 3)),
         rng.uniform(-3, 3), rng.uniform(-3, 3), tuple(rng.randrange(256) for _ in range(3)))
        for _ in range(6)
    ]
    frames = max(1, round(fps * duration_s))
    buffer = io.BytesIO()
    # bitexact: no encoder version or creation time in the file, so the bytes are reproducible.
    with av.open(buffer, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "preset": "veryfast", "crf": "28", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for n in range(frames):
            image = Image.new("RGB", (width, height), background)
            draw = ImageDraw.Draw(image)
            for x, y, r, dx, dy, fill in shapes:
                cx, cy = (x + dx * n) % width, (y + dy * n) % height
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
            frame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


# Images up to this many pixels render on the event loop (about 0.1 ms): a thread hop costs
# more than that, and a thread running Pillow's Python code holds the GIL that the event loop
# waits for after each of its own system calls (see docs/performance.md).
INLINE_MAX_PIXELS = 64 * 64


def _is_small(request: GenerationRequest) -> bool:
    if request.ref == CLIP_REF:
        return False
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
        self, request: GenerationRequest, *, prediction_id: str | None, on_created: OnCreated,
        on_queue_position: OnQueuePosition = no_queue,
    ) -> GenerationResult:
        """Render every output (in a thread unless small); nothing to resume, so
        ``prediction_id`` is unused."""
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if self.failure_rate and random.random() < self.failure_rate:
            raise ProviderFailed("the local model failed (simulated)", code="model_failed")
        outputs: list[Output]
        if request.ref == CLIP_REF:
            outputs = [
                BytesOutput(await asyncio.to_thread(render_clip, request, i))
                for i in range(request.num_outputs)
            ]
        elif _is_small(request):
            outputs = [BytesOutput(render(request, i)) for i in range(request.num_outputs)]
        else:
            outputs = [
                BytesOutput(await asyncio.to_thread(render, request, i))
                for i in range(request.num_outputs)
            ]
        return GenerationResult(outputs)

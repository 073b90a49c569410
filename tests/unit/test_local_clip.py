"""local/clip: a real short H.264 MP4, deterministic from prompt and seed."""

from __future__ import annotations

import io
import uuid
from typing import Any

import av
import pytest

from worker import media
from worker.providers.base import GenerationRequest, ProviderFailed
from worker.providers.local import render_clip

DEFAULTS = {"width": 256, "height": 256, "fps": 12, "duration_s": 2.0}


def _request(seed: int = 7, prompt: str = "a boat at sea", **params: Any) -> GenerationRequest:
    return GenerationRequest(job_id=uuid.uuid4(), model_key="local/clip", ref="clip",
                             prompt=prompt, num_outputs=1, params={**DEFAULTS, **params},
                             seed=seed)


def test_a_clip_is_an_h264_mp4_of_the_asked_size_rate_and_length() -> None:
    data = render_clip(_request(width=128, height=96, fps=10, duration_s=1.5), 0)
    assert media.sniff(data[: media.SNIFF_BYTES]) == media.MP4
    info = media.check_video(data, media.Limits(10**8, 60))
    assert (info.width, info.height) == (128, 96)
    assert info.fps == pytest.approx(10.0)
    assert info.duration_s == pytest.approx(1.5)
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert len(list(container.decode(stream))) == 15
    assert media.first_frame(data).size == (128, 96)


def test_same_prompt_and_seed_give_the_same_bytes() -> None:
    first = render_clip(_request(), 0)
    assert render_clip(_request(), 0) == first
    assert render_clip(_request(seed=8), 0) != first
    assert render_clip(_request(prompt="a boat at night"), 0) != first
    assert render_clip(_request(), 1) != first


@pytest.mark.parametrize(
    "params",
    [{"width": 1000}, {"width": 15}, {"height": 101}, {"fps": 0}, {"fps": 60},
     {"duration_s": 30}, {"duration_s": 0.1}],
)
def test_params_out_of_bounds_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ProviderFailed) as refused:
        render_clip(_request(**params), 0)
    assert refused.value.code == "invalid_params"

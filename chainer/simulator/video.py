"""The simulator's picture maker: real H.264 MP4s that visibly continue one another.

A video is a `Scene` (a background, either a generated gradient or the image an
image2video task was given, plus a ball whose path is a function of absolute time) drawn
over a time span. An extension renders the same scene from where its parent stopped and
joins the new part to the parent without re-encoding, so the result is the whole video
so far, as Kling's is, and the motion at the join is continuous. An Omni-Video shot
renders the same scene from where its reference video stopped, as a video of its own. Every frame carries the
segment number, its prompt and a time code, so a person can see where each segment
starts.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .. import media


@dataclass(frozen=True)
class Scene:
    """What stays the same across a chain: the background and the ball's path."""

    seed: int
    image: bytes | None = None  # PNG/JPEG bytes of an image2video start frame


@dataclass(frozen=True)
class Canvas:
    width: int
    height: int
    fps: int


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _background(scene: Scene, canvas: Canvas) -> Image.Image:
    if scene.image is not None:
        img = Image.open(io.BytesIO(scene.image)).convert("RGB")
        # cover-crop to the canvas so the first frame is the given image, framed
        scale = max(canvas.width / img.width, canvas.height / img.height)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        left = (img.width - canvas.width) // 2
        top = (img.height - canvas.height) // 2
        return img.crop((left, top, left + canvas.width, top + canvas.height))
    hue = (scene.seed * 47) % 255
    base = Image.linear_gradient("L").resize((canvas.width, canvas.height))
    r = base.point(lambda v: (v + hue) % 256 // 2 + 40)
    g = base.rotate(90).resize((canvas.width, canvas.height)).point(lambda v: v // 3 + 30)
    b = base.point(lambda v: (255 - v + hue * 2) % 256 // 2 + 50)
    return Image.merge("RGB", (r, g, b))


class _Stamp:
    """Text drawn from glyphs rendered once per character.

    The time code changes on every frame but is made of a dozen characters; drawing it
    with FreeType (and its stroke) per frame was over half of a render's time. Glyphs
    are placed at the font's advance widths, without kerning.
    """

    def __init__(self, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, stroke: int) -> None:
        self.font, self.stroke = font, stroke
        self._glyphs: dict[str, tuple[Image.Image, int, int, float]] = {}

    def _glyph(self, char: str) -> tuple[Image.Image, int, int, float]:
        glyph = self._glyphs.get(char)
        if glyph is None:
            left, top, right, bottom = (int(v) for v in self.font.getbbox(char, stroke_width=self.stroke))
            image = Image.new("RGBA", (max(1, right - left), max(1, bottom - top)), (0, 0, 0, 0))
            ImageDraw.Draw(image).text(
                (-left, -top),
                char,
                fill=(255, 255, 255, 255),
                font=self.font,
                stroke_width=self.stroke,
                stroke_fill=(0, 0, 0, 255),
            )
            glyph = self._glyphs[char] = (image, left, top, self.font.getlength(char))
        return glyph

    def draw(self, frame: Image.Image, xy: tuple[int, int], text: str) -> None:
        x, y = float(xy[0]), xy[1]
        for char in text:
            image, left, top, advance = self._glyph(char)
            if not char.isspace():
                frame.paste(image, (round(x) + left, y + top), image)
            x += advance


def _ball(scene: Scene, canvas: Canvas, t: float) -> tuple[float, float]:
    """Lissajous path as a function of absolute time: continuous across segments."""
    phase = (scene.seed % 100) / 100 * math.tau
    x = canvas.width * (0.5 + 0.38 * math.sin(0.9 * t + phase))
    y = canvas.height * (0.45 + 0.3 * math.sin(1.3 * t))
    return x, y


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return lines[:2]


def _frames(
    scene: Scene, canvas: Canvas, *, start: float, frames: int, segment: int, prompt: str, watermark: bool
) -> Iterator[bytes]:
    bg = _background(scene, canvas)
    small, big = _font(max(10, canvas.height // 22)), _font(max(12, canvas.height // 16))
    radius = max(4, canvas.height // 14)
    stamp = _Stamp(big, stroke=2)
    caption = _wrap(f"#{segment} {prompt}", max(20, canvas.width // max(6, canvas.height // 40)))
    band = canvas.height - (len(caption) + 1) * (canvas.height // 14) - 8
    # the caption band is the same in every frame and covers what is under it: drawn once
    strip = Image.new("RGB", (canvas.width, canvas.height - band), (0, 0, 0))
    strip_draw = ImageDraw.Draw(strip)
    for n, line in enumerate(caption):
        strip_draw.text((8, 4 + n * (canvas.height // 14)), line, fill=(255, 255, 255), font=small)
    for i in range(frames):
        t = start + i / canvas.fps
        if scene.image is not None and t == 0:
            yield bg.tobytes()  # as Kling's: an image2video's first frame is the image itself
            continue
        frame = bg.copy()
        if scene.image is not None:  # a slow zoom keeps an image start from looking frozen
            z = 1 + 0.01 * t
            w, h = canvas.width / z, canvas.height / z
            frame = frame.crop(
                (
                    int((canvas.width - w) / 2),
                    int((canvas.height - h) / 2),
                    int((canvas.width + w) / 2),
                    int((canvas.height + h) / 2),
                )
            ).resize((canvas.width, canvas.height))
        draw = ImageDraw.Draw(frame)
        x, y = _ball(scene, canvas, t)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(250, 230, 60), outline=(0, 0, 0))
        frame.paste(strip, (0, band))
        stamp.draw(frame, (8, 6), f"t={t:07.3f}s  seg {segment}")
        if watermark:
            draw.text((canvas.width - 8, 6), "KLING SIM", anchor="ra", fill=(255, 255, 255), font=big)
        yield frame.tobytes()


def render(
    dest: Path,
    *,
    scene: Scene,
    canvas: Canvas,
    frames: int,
    segment: int,
    prompt: str,
    parent: Path | None = None,
    parent_frames: int = 0,
    start_frame: int = 0,
    watermark: bool = False,
) -> None:
    """Write `dest`: the parent (if any) followed by `frames` new frames of the scene.

    Without a parent the frames start at `start_frame` of the scene's time: an Omni-Video
    shot that continues a reference video starts right after the reference's last frame.
    """
    start = (parent_frames if parent is not None else start_frame) / canvas.fps
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        part = Path(tmp) / "part.mp4"
        media.encode_rgb_frames(
            _frames(
                scene, canvas, start=start, frames=frames, segment=segment, prompt=prompt, watermark=watermark
            ),
            width=canvas.width,
            height=canvas.height,
            fps=canvas.fps,
            dest=part,
        )
        out = Path(tmp) / "out.mp4"
        if parent is None:
            part.replace(out)
        else:
            media.join([parent, part], out, drop_last_frame=False)
        out.replace(dest)

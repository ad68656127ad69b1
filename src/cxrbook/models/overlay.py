"""Grad-CAM heatmaps drawn over X-rays: one blend, one resize, one captioned overlay image.

Used by notebook figures (``gradcam.plot_gradcam_grid``) and by ``predict``'s
overlay PNGs, so the two cannot drift. Imports no Keras; matplotlib only for its
``jet`` colormap, when a heatmap is drawn.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

MAX_OVERLAY_SIDE = 1024
MIN_OVERLAY_WIDTH = 480  # narrower images are shown upscaled, so the caption (and its caution) stays legible


def resize_float(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float map resized bilinearly to (height, width)."""
    from PIL import Image
    return np.asarray(Image.fromarray(np.asarray(a, np.float32), mode="F").resize((width, height), Image.BILINEAR),
                      dtype=np.float32)


def blend(gray_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a [0, 1] heatmap (matplotlib's jet colormap) over a grayscale image: (H, W, 3) uint8.

    The heatmap is resized to the image when their shapes differ.
    """
    from matplotlib import colormaps
    gray = np.asarray(gray_uint8)
    if gray.ndim == 3:
        gray = gray[..., 0]
    gray = gray.astype(np.float32)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != gray.shape:
        heat = resize_float(heat, *gray.shape)
    colored = colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * np.repeat(gray[..., None], 3, axis=-1) + alpha * colored
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)




def overlay_image(gray: np.ndarray, heatmap: np.ndarray, caption: str, alpha: float = 0.4):
    """PIL RGB image: jet heatmap blended over the gray image, with a caption strip below.

    Images whose longer side exceeds ``MAX_OVERLAY_SIDE`` are shown downscaled, images narrower than
    ``MIN_OVERLAY_WIDTH`` upscaled (within ``MAX_OVERLAY_SIDE``); caption lines wider than the image wrap.
    """
    from PIL import Image, ImageDraw, ImageFont
    g = np.asarray(gray)
    if max(g.shape) > MAX_OVERLAY_SIDE or g.shape[1] < MIN_OVERLAY_WIDTH:
        scale = min(MAX_OVERLAY_SIDE / max(g.shape), max(1.0, MIN_OVERLAY_WIDTH / g.shape[1]))
        size = (max(1, round(g.shape[1] * scale)), max(1, round(g.shape[0] * scale)))
        g = np.asarray(Image.fromarray(g).resize(size, Image.BILINEAR))
    img = Image.fromarray(blend(g, heatmap, alpha), "RGB")
    font_size = max(12, img.width // 40)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(img)
    lines = wrap_caption(caption, lambda t: measure.textlength(t, font=font), img.width - 8)
    strip = Image.new("RGB", (img.width, (font_size + 6) * len(lines) + 6), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((4, 4 + i * (font_size + 6)), line, fill=(255, 255, 0), font=font)
    out = Image.new("RGB", (img.width, img.height + strip.height))
    out.paste(img, (0, 0))
    out.paste(strip, (0, img.height))
    return out


def wrap_caption(caption: str, text_width: Callable[[str], float], max_width: float) -> list[str]:
    """The caption's lines (split at newlines), each wrapped at spaces so that ``text_width(line) <= max_width``
    where possible (a single word wider than that stays on its own line)."""
    out: list[str] = []
    for paragraph in caption.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and text_width(trial) > max_width:
                out.append(line)
                line = word
            else:
                line = trial
        out.append(line)
    return out

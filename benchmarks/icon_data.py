"""Real colour drawings at 32x32 from Debian packages: desktop icon themes and Noto's colour emoji.

    apt-get install fonts-noto-color-emoji unicode-data oxygen-icon-theme gnome-icon-theme tango-icon-theme

Two sets for a transfer study, both small colour drawings composited on white:
- **emoji**: every fully-qualified single-person emoji of Unicode's ``emoji-test.txt`` (package ``unicode-data``)
  drawn with ``NotoColorEmoji.ttf`` (package ``fonts-noto-color-emoji``) and labelled by its Unicode group
  (Smileys & Emotion, Animals & Nature, Food & Drink, ...);
- **icons**: the 32x32 PNG icons of the installed icon themes under ``/usr/share/icons`` (oxygen, gnome, Tango,
  Adwaita, ...), labelled by their context folder (actions, apps, devices, ...).

Nothing is downloaded; a missing package is one sentence naming it. Rendered arrays are cached in an ``.npz``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from src.errors import ConfigError

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
ICON_ROOT = Path("/usr/share/icons")
PACKAGES = "fonts-noto-color-emoji unicode-data oxygen-icon-theme gnome-icon-theme tango-icon-theme"


def _need(path: Path, package: str) -> None:
    if not path.exists():
        raise ConfigError(f"{path} is missing; install the Debian package {package} "
                          f"(apt-get install {PACKAGES}).")


def emoji_list() -> list[tuple[str, str]]:
    """(emoji, group) for every fully-qualified emoji without skin-tone or hair modifiers."""
    _need(EMOJI_TEST, "unicode-data")
    out, group = [], ""
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line:
            code = line.split(";", 1)[0].split()
            chars = "".join(chr(int(c, 16)) for c in code)
            if any(0x1F3FB <= int(c, 16) <= 0x1F3FF or 0x1F9B0 <= int(c, 16) <= 0x1F9B3 for c in code):
                continue  # skin tones and hair styles: variants of the same drawing
            out.append((chars, group))
    return out


def _on_white(rgba, res: int) -> np.ndarray:
    from PIL import Image

    box = rgba.getbbox()
    if box is None:
        return None
    im = rgba.crop(box)
    side = max(im.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
    square = square.resize((res, res), Image.LANCZOS)
    white = Image.new("RGBA", square.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, square).convert("RGB"), dtype=np.uint8)


def render_emoji(res: int = 32) -> tuple[np.ndarray, list[str]]:
    from PIL import Image, ImageDraw, ImageFont

    _need(EMOJI_FONT, "fonts-noto-color-emoji")
    font = ImageFont.truetype(str(EMOJI_FONT), 109)  # the bitmap strike of the colour font
    images, groups = [], []
    for chars, group in emoji_list():
        canvas = Image.new("RGBA", (160 * max(1, len(chars)), 160), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((8, 8), chars, font=font, embedded_color=True)
        arr = _on_white(canvas, res)
        if arr is not None:
            images.append(arr)
            groups.append(group)
    return np.stack(images), groups


def render_icons(res: int = 32) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    files = sorted(p for p in ICON_ROOT.glob("*/32x32/*/*.png") if p.is_file())
    if not files:
        raise ConfigError(f"no 32x32 PNG icons under {ICON_ROOT}; install the Debian packages oxygen-icon-theme "
                          "gnome-icon-theme tango-icon-theme.")
    images, contexts, seen = [], [], set()
    for f in files:
        with Image.open(f) as im:
            arr = _on_white(im.convert("RGBA"), res)
        if arr is None:
            continue
        digest = hashlib.sha1(arr.tobytes()).hexdigest()
        if digest in seen:  # themes repeat icons under several names (links, aliases)
            continue
        seen.add(digest)
        images.append(arr)
        contexts.append(f.parent.name)
    return np.stack(images), contexts


def load(kind: str, cache: Path, res: int = 32) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, res, res, 3), integer labels, label names) of ``kind`` (emoji or icons), cached."""
    path = Path(cache) / f"{kind}_{res}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return z["x"], z["y"], [str(n) for n in z["names"]]
    x, labels = (render_emoji if kind == "emoji" else render_icons)(res)
    names = sorted(set(labels))
    y = np.array([names.index(v) for v in labels], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x, y=y, names=np.array(names))
    return x, y, names


def write_folder(x: np.ndarray, y: np.ndarray, names: list[str], folder: Path) -> None:
    """Images as ``folder/<label>/iNNNNN.png`` (the class-folder layout the datamodule and the scorers read)."""
    from PIL import Image

    for i, (im, label) in enumerate(zip(x, y)):
        sub = Path(folder) / names[label].replace(" & ", "_").replace(" ", "_").lower()
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(sub / f"i{i:05d}.png")

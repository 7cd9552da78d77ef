"""The screen of a lab guest's pty console, as a PNG: what the console printed (its log,
from the first byte) is played through a terminal emulator (pyte) of the VGA text
console's size, and the screen it ends with is drawn in DejaVu Sans Mono.

The vCenter launcher runs it for ``CreateScreenshot_Task`` on a VM whose console is a
pty (``launcher/screenshot.go``)::

    python -m beachhead.bootstrap.lab.screenshot --log CONSOLE_LOG --out FILE.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyte
from PIL import Image, ImageDraw, ImageFont

COLUMNS, LINES = 80, 25  # the VGA text console's size
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")
FONT_SIZE = 16
# pyte's colour names, as the VGA console's palette draws them.
PALETTE = {
    "black": (0, 0, 0),
    "red": (170, 0, 0),
    "green": (0, 170, 0),
    "brown": (170, 85, 0),
    "blue": (0, 0, 170),
    "magenta": (170, 0, 170),
    "cyan": (0, 170, 170),
    "white": (170, 170, 170),
}
FOREGROUND, BACKGROUND = PALETTE["white"], PALETTE["black"]


def screen_of(output: bytes, columns: int = COLUMNS, lines: int = LINES) -> pyte.Screen:
    """The terminal screen after ``output`` was printed on it."""
    screen = pyte.Screen(columns, lines)
    pyte.ByteStream(screen).feed(output)  # the log holds what the terminal got (CRLF line ends)
    return screen


def _colour(name: str, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if name == "default":
        return default
    if name in PALETTE:
        return PALETTE[name]
    if len(name) == 6:
        try:
            return int(name[0:2], 16), int(name[2:4], 16), int(name[4:6], 16)
        except ValueError:
            pass
    return default


def render(screen: pyte.Screen) -> Image.Image:
    """The screen drawn as a console shows it: light grey on black, a cell per character."""
    font = ImageFont.truetype(str(FONT), FONT_SIZE)
    cell_w = round(font.getlength("M"))
    ascent, descent = font.getmetrics()
    cell_h = ascent + descent
    image = Image.new("RGB", (cell_w * screen.columns, cell_h * screen.lines), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for y in range(screen.lines):
        row = screen.buffer[y]
        for x in range(screen.columns):
            char = row[x]
            fg, bg = _colour(char.fg, FOREGROUND), _colour(char.bg, BACKGROUND)
            if char.reverse:
                fg, bg = bg, fg
            box = (x * cell_w, y * cell_h, (x + 1) * cell_w - 1, (y + 1) * cell_h - 1)
            if bg != BACKGROUND:
                draw.rectangle(box, fill=bg)
            if char.data.strip():
                draw.text((x * cell_w, y * cell_h), char.data, font=font, fill=fg)
    if not screen.cursor.hidden:
        x, y = screen.cursor.x, screen.cursor.y
        draw.rectangle((x * cell_w, (y + 1) * cell_h - 3, (x + 1) * cell_w - 1, (y + 1) * cell_h - 2), fill=FOREGROUND)
    return image


def main(argv: list[str] | None = None) -> int:
    """Write the PNG of the console whose log is ``--log`` to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True, help="what the console printed")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    options = parser.parse_args(argv)
    try:
        output = options.log.read_bytes()
    except FileNotFoundError:
        output = b""
    partial = options.out.with_name(options.out.name + ".part")
    render(screen_of(output)).save(partial, format="PNG")
    partial.replace(options.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The lab's pty-console screenshots: the console's transcript played through a
terminal emulator and drawn, so the picture shows the screen the transcript ends with."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from beachhead.bootstrap.lab import screenshot


def test_the_final_screen_is_drawn_where_its_text_is(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    # Printed, then cleared (as `clear` does): only what follows is on the screen.
    log.write_bytes(b"gone\r\n\x1b[H\x1b[2J" + b"root@lin-01:~# echo hi\r\nhi\r\nroot@lin-01:~# ")
    out = tmp_path / "screen.png"
    assert screenshot.main(["--log", str(log), "--out", str(out)]) == 0
    screen = screenshot.screen_of(log.read_bytes())
    assert screen.display[0].rstrip() == "root@lin-01:~# echo hi"
    assert screen.display[1].rstrip() == "hi"
    assert not any("gone" in line for line in screen.display)
    image = Image.open(out).convert("L")
    width, height = image.size
    cell_w, cell_h = width // screenshot.COLUMNS, height // screenshot.LINES
    first_line = image.crop((0, 0, 22 * cell_w, cell_h))
    assert first_line.getextrema()[1] > 128  # its text is drawn
    right_of_text = image.crop((30 * cell_w, 0, width, 2 * cell_h))
    assert right_of_text.getextrema() == (0, 0)  # nothing but the black background
    assert image.crop((0, 4 * cell_h, width, height)).getextrema() == (0, 0)


def test_an_empty_console_is_a_black_screen_with_a_cursor(tmp_path: Path) -> None:
    out = tmp_path / "screen.png"
    assert screenshot.main(["--log", str(tmp_path / "missing.log"), "--out", str(out)]) == 0
    image = Image.open(out).convert("L")
    assert image.getextrema()[1] > 128  # the cursor, top left
    assert image.crop((image.size[0] // 2, 0, *image.size)).getextrema() == (0, 0)

"""Reading a console's screen: OCR of a screenshot, and waiting for text to appear on it.

The OCR is Debian's tesseract (``tesseract-ocr`` with its English data), driven through
pytesseract, which runs the ``tesseract`` program on each picture; it runs in a worker
thread with a time limit, never on the event loop. Console screens are small light
glyphs on a dark background: the picture is made grey, dark backgrounds are inverted
(tesseract reads dark text on light best) and it is scaled up so that a terminal font's
few pixels make letters tesseract recognises, then blurred a little to round the glyphs'
pixel steps.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Awaitable, Callable

import pytesseract
from PIL import Image, ImageFilter, ImageOps, ImageStat

from beachhead.agent.errors import BeachheadError, StepFailed

OCR_TIMEOUT_S = 60  # one picture; tesseract is killed past this
# Terminal glyphs are 8-16 pixels high; tesseract wants letters about 30 high. Measured
# on QEMU's VGA text console (923 known 5-digit numbers): x3 LANCZOS read 92.4% (5 as 9,
# 8 as 6), x2 LANCZOS 99.5%, x2 then a 0.5 px Gaussian blur 99.8%; x3-x5, NEAREST,
# BILINEAR or a threshold were worse; words read the same, an xterm's fully at x2 too.
SCALE = 2
BLUR = 0.5  # Gaussian radius in pixels, after scaling
DARK = 128  # a mean grey level below this is a dark background
SHOWN = 2000  # how much of the last screen text an error quotes
# One uniform block of text (a terminal), spaces kept as they are on the screen.
TESSERACT_CONFIG = "--psm 6 -c preserve_interword_spaces=1"


class OcrFailed(BeachheadError):
    """Tesseract could not read a screenshot (missing, killed after its time limit, failed)."""


class TextNotOnScreen(StepFailed, TimeoutError):
    """Waited for text to appear on a console's screen, and it did not in time.

    ``screen_text`` is what the screen showed last (also quoted in the message); the
    error is a :class:`TimeoutError` too, so either ``except`` catches it.
    """

    def __init__(self, text: str, timeout_s: float, screen_text: str) -> None:
        self.text = text
        self.timeout_s = timeout_s
        self.screen_text = screen_text
        shown = screen_text.strip()
        if len(shown) > SHOWN:
            shown = "..." + shown[-SHOWN:]
        last = f"the screen showed:\n{shown}" if shown else "no text was read from the screen"
        super().__init__(
            f"waiting for {text!r} on the screen", f"not there after {timeout_s:g}s; {last}", stdout=screen_text
        )


def prepare(image: Image.Image) -> Image.Image:
    """``image`` made ready for tesseract: grey, dark on light, scaled up, slightly blurred."""
    grey = ImageOps.grayscale(image)
    if ImageStat.Stat(grey).mean[0] < DARK:
        grey = ImageOps.invert(grey)
    scaled = grey.resize((grey.width * SCALE, grey.height * SCALE), Image.Resampling.LANCZOS)
    return scaled.filter(ImageFilter.GaussianBlur(BLUR))


def _ocr(png: bytes) -> str:
    with Image.open(io.BytesIO(png)) as image:
        prepared = prepare(image)
    try:
        text: str = pytesseract.image_to_string(prepared, lang="eng", config=TESSERACT_CONFIG, timeout=OCR_TIMEOUT_S)
    except pytesseract.TesseractNotFoundError:
        raise OcrFailed("OCR: tesseract is not installed (Debian's tesseract-ocr, tesseract-ocr-eng)") from None
    except pytesseract.TesseractError as err:
        raise OcrFailed(f"OCR: tesseract failed: {err.message}") from None
    except RuntimeError as err:  # pytesseract's time limit
        raise OcrFailed(f"OCR: tesseract did not finish within {OCR_TIMEOUT_S}s ({err})") from None
    return text


async def screen_text(png: bytes) -> str:
    """The text tesseract reads on the screenshot ``png``, line by line."""
    return await asyncio.to_thread(_ocr, png)


def _words(text: str) -> str:
    return " ".join(text.split())


async def wait_for_text(
    screenshot: Callable[[], Awaitable[bytes]], text: str, timeout_s: float, interval_s: float = 0.5
) -> None:
    """Return once ``text`` is on the screen ``screenshot`` shows (compared with runs of
    white space as one space, so a line break the screen put in does not matter); raise
    :class:`TextNotOnScreen`, quoting the last screen, after ``timeout_s``."""
    wanted = _words(text)
    last = ""
    deadline = time.monotonic() + timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                last = await screen_text(await screenshot())
                if wanted in _words(last):
                    return
                await asyncio.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))
    except TimeoutError:
        raise TextNotOnScreen(text, timeout_s, last) from None

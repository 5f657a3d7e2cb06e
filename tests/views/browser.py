"""A real headless browser for the report's page: Debian's chromium-headless-shell (or
chromium), installed by tests/slurm/install.sh. Tests that need it skip with that reason
where it is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium-headless-shell", "chromium")


def have_browser() -> bool:
    return any(shutil.which(name) for name in BROWSERS)


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(reason="no chromium-headless-shell or chromium (tests/slurm/install.sh "
                       "installs it)")
    raise AssertionError  # not reached: skip raises


def screenshot(page: Path, out: Path, size: tuple[int, int] = (1400, 1000)):
    """The page as the browser draws it (a PIL image). The browser gets no network: a page
    that fetched anything would show it missing, not fail here; the tests check the page's
    text for that instead."""
    from PIL import Image

    subprocess.run([browser(), "--no-sandbox", "--headless", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={out}",
                    f"--window-size={size[0]},{size[1]}", page.resolve().as_uri()],
                   capture_output=True, timeout=60, check=True)
    return Image.open(out).convert("RGB")


def count_colour(image, colour: str, tolerance: int = 3) -> int:
    """Pixels within `tolerance` of `colour` (#rrggbb) on each channel."""
    want = tuple(int(colour[k:k + 2], 16) for k in (1, 3, 5))
    return sum(n for n, rgb in image.getcolors(maxcolors=1 << 24)
               if all(abs(a - b) <= tolerance for a, b in zip(rgb, want, strict=True)))

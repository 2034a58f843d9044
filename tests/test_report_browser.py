"""The HTML report seen in a real browser (issue 18, item 4): Debian's headless Chromium (`.ci/run`
installs it) loads the demo's leaky-model report from disk with networking off, and the page shows the
verdict, the SVG lineage, the score plot and every finding; the first screen tells the story."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from demo_workdir import demo_folder

from mergeguard.cli import main

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,900",
]
RED, BLUE, MARK = (198, 40, 40), (21, 101, 192), (255, 224, 130)  # badge/node, model's bars, highlights


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest) -> Path:
    return demo_folder(request)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("MERGEGUARD_REQUIRE_SHARED_DATA"):  # CI: .ci/run installs it
            pytest.fail("chromium is missing; .ci/run installs Debian's package")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return found


def _chromium(binary: str, profile: Path, *args: str) -> str:
    done = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(pixel[:3], colour, strict=True))


def _count(image, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> int:
    return sum(_near(p, colour) for p in image.crop(box).getdata())


def test_the_leaky_report_in_headless_chromium(chromium: str, demo: Path, tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    assert main(["report", "ft-leaky", "--db", str(demo / "mergeguard.db"), "--out", str(page)]) == 0
    dom = _chromium(chromium, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert re.search(r'<span class="verdict" id="verdict"[^>]*>contaminated</span>', dom)
    lineage = re.search(r'<svg[^>]*class="lineage".*?</svg>', dom, re.S).group(0)
    assert len(re.findall(r'<g class="node ', lineage)) == 2 and "<line" in lineage
    assert 'class="node contaminated" data-model="ft-leaky"' in lineage
    assert re.search(r'<svg class="scores".*?<g id="patch_\d+">.*?</svg>', dom, re.S)  # matplotlib's bars
    findings = re.findall(r'<div class="finding" id="finding-(\d+)">', dom)
    assert [int(n) for n in findings] == list(range(1, 21))
    assert sorted(int(i) for i in re.findall(r"demo_quiz item (\d+) \(quiz-\d+\)", dom)) == list(range(20))

    shot = tmp_path / "report.png"
    _chromium(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 900)
    assert _count(image, RED, (0, 0, 640, 70)) > 500  # the red "contaminated" badge beside the title
    assert _count(image, RED, (0, 250, 320, 600)) > 200  # the lineage's red-framed ft-leaky box
    assert _count(image, BLUE, (300, 250, 1280, 600)) > 2000  # the model's bar in the plot
    assert _count(image, MARK, (0, 550, 1280, 900)) > 2000  # the first finding, shared words marked

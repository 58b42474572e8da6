"""The explorer page in a real headless Chromium (Debian's package, driven by Playwright):
look a shopper up, see her tags and recommendations, give feedback, see them change.

Screenshots go to ``test-artifacts/`` (or ``$PROFILER_TEST_ARTIFACTS``) at each step.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from profiler.service.app import create_app
from profiler.workspace import Workspace
from tests.conftest import copy_workspace, live_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no Chromium at {CHROMIUM}: install Debian's chromium package (.ci/run does)",
)
#: Flags for a machine with a closed network (no background connections) running as root.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def open_page(p, url: str) -> tuple:
    """Debian's Chromium on the explorer page; the page's script errors collect in a list."""
    browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    return browser, page, errors


@pytest.fixture
def artifacts() -> Path:
    root = Path(os.environ.get("PROFILER_TEST_ARTIFACTS", "test-artifacts"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def workspace(tmp_path, tiny_tagged_template, embedder):
    """The tiny slice with a tagger (a copy of the session's)."""
    ws = copy_workspace(tiny_tagged_template, tmp_path, embedder)
    yield ws
    ws.close()


def test_look_up_a_shopper_give_feedback_and_see_the_list_change(workspace, tiny_frames, artifacts):
    _, events = tiny_frames
    user = events["user_id"].iloc[0]
    with live_server(create_app(workspace)) as url, playwright.sync_playwright() as p:
        browser, page, errors = open_page(p, url)
        assert page.title() == "interest-profiler explorer"

        page.fill("#user-id", user)
        page.click("#lookup")
        page.wait_for_selector("#recs li.rec")
        tags = page.locator("#tags li.tag")
        assert tags.count() > 0
        expected = [t.tag for t in workspace.tags(user)]
        assert tags.first.get_attribute("data-tag") == expected[0]
        assert page.locator("#tags .evidence").count() > 0
        assert page.locator("#centres li").count() > 0
        before = page.locator("#recs li.rec").evaluate_all(
            "rows => rows.map(r => r.dataset.itemId)"
        )
        assert before == workspace.recommend(user, k=10).ids
        page.screenshot(path=str(artifacts / "explorer-1-shopper.png"), full_page=True)

        disliked = before[0]
        page.locator("#recs li.rec").first.locator("button.dislike").click()
        page.wait_for_function(
            "id => ![...document.querySelectorAll('#recs li.rec')]"
            ".some(r => r.dataset.itemId === id)",
            arg=disliked,
        )
        after = page.locator("#recs li.rec").evaluate_all("rows => rows.map(r => r.dataset.itemId)")
        assert after != before and disliked not in after
        assert "disliked" in page.locator("#status").inner_text()
        assert workspace.user_events(user)["kind"].iloc[-1] == "dislike"
        page.screenshot(path=str(artifacts / "explorer-2-after-feedback.png"), full_page=True)

        page.fill("#user-id", "nobody-here")
        page.click("#lookup")
        page.wait_for_selector("#status.error")
        assert "unknown user 'nobody-here'" in page.locator("#status").inner_text()

        page.fill("#texts", "a cosy wool sweater for winter")
        page.click("#from-texts")
        page.wait_for_function(
            "document.querySelector('#who-title').textContent.startsWith('Anon')"
        )
        page.wait_for_selector("#recs li.rec")
        assert page.locator("#tags li.tag").count() > 0
        assert page.locator("#recs button.like").count() == 0  # no feedback without an id
        page.screenshot(path=str(artifacts / "explorer-3-texts.png"), full_page=True)
        browser.close()
    assert errors == []


@pytest.fixture
def chinese(zh_workspace, tmp_path):
    """A copy of the Chinese workspace (multilingual-e5-small) with a tagger of its own."""
    shutil.copytree(zh_workspace.path, tmp_path / "zh", symlinks=True)
    ws = Workspace.open(tmp_path / "zh", embedder=zh_workspace.embedder)
    ws.train_tags(epochs=1, batch_size=8, max_length=64, seed=0)
    yield ws
    ws.close()


def test_chinese_shoppers_and_texts_show_in_chinese(chinese, artifacts):
    with live_server(create_app(chinese)) as url, playwright.sync_playwright() as p:
        browser, page, errors = open_page(p, url)

        page.fill("#user-id", "u01")
        page.click("#lookup")
        page.wait_for_selector("#recs li.rec")
        shown = page.locator("#recs li.rec").evaluate_all("rows => rows.map(r => r.dataset.itemId)")
        assert shown == chinese.recommend("u01", k=10).ids
        titles = page.locator("#recs").inner_text()
        assert chinese.recommend("u01", k=10).titles[0] in titles  # Chinese, not mojibake
        tags = page.locator("#tags li.tag").evaluate_all("rows => rows.map(r => r.dataset.tag)")
        assert tags and tags[0] == chinese.tags("u01")[0].tag
        assert "碎花很好看" in page.locator("#events").inner_text()  # her own review
        evidence = page.locator("#tags .evidence").all_inner_texts()
        assert evidence and not [
            e for e in evidence if e.rstrip().endswith(":")
        ]  # a view names its item
        page.screenshot(path=str(artifacts / "explorer-zh-shopper.png"), full_page=True)

        page.fill("#texts", "想买一副降噪耳机，坐地铁用")
        page.click("#from-texts")
        page.wait_for_function(
            "document.querySelector('#who-title').textContent.startsWith('Anon')"
        )
        page.wait_for_selector("#recs li.rec")
        first = page.locator("#recs li.rec").first
        assert first.get_attribute("data-item-id") == "zh-13"
        assert "蓝牙降噪耳机" in first.inner_text()
        page.screenshot(path=str(artifacts / "explorer-zh-texts.png"), full_page=True)
        browser.close()
    assert errors == []

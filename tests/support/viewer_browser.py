"""Drive the evaluation viewer in a real headless Chromium (used by tests/test_viewer_browser.py).

The browser is the npm package ``@sparticuz/chromium`` installed by ``npm ci --prefix tests/browser`` (the README's
test command runs it): its ``executablePath()`` unpacks a headless Chromium that runs offline here. Python's
``playwright`` drives it (``pip install -e '.[dev]'``); playwright's own browser download is not used.

Run as a script it makes the README's screenshot of an evaluation's viewer:
``python tests/support/viewer_browser.py EVAL_DIR OUT.png`` (the viewer of EVAL_DIR is written first if missing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"  # tests/browser
NODE_SCRIPT = (
    "import('@sparticuz/chromium').then(async (m) => { const c = m.default;"
    " console.log(JSON.stringify({ path: await c.executablePath(), args: c.args })); })"
)


class BrowserMissing(RuntimeError):
    pass


def chromium_launch_options() -> dict:
    """``executable_path`` and ``args`` of the npm package's Chromium (unpacked on first use)."""
    if not (BROWSER_DIR / "node_modules" / "@sparticuz" / "chromium").is_dir():
        raise BrowserMissing(
            f"no headless Chromium: run `npm ci --prefix {BROWSER_DIR}` (the README's test command does)"
        )
    try:
        out = subprocess.run(
            ["node", "-e", NODE_SCRIPT], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=180, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        raise BrowserMissing(f"could not unpack @sparticuz/chromium with node: {exc} {detail[-2000:]}") from None
    info = json.loads(out.stdout.strip().splitlines()[-1])
    return {"executable_path": info["path"], "args": info["args"]}


class ViewerPage:
    """A viewer page opened from ``file://`` that records console errors and blocks (and counts) every request
    that is not to a local file."""

    def __init__(self, browser, index_html: Path, width: int = 1500, height: int = 1000):
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.network: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.route("**/*", self._route)
        self.page.goto(Path(index_html).resolve().as_uri())
        self.page.wait_for_selector("#list-body tr.row")

    def _route(self, route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            self.network.append(route.request.url)
            route.abort()

    def select(self, control: str, value: str) -> None:
        self.page.select_option(f"#{control}", value)

    def count(self) -> int:
        """How many questions the filters keep (the "N of M questions" line)."""
        return int(self.page.text_content("#count").split(" of ")[0].replace(",", ""))

    def row_ids(self) -> list[int]:
        return [int(x) for x in self.page.eval_on_selector_all("#list-body tr.row", "rs => rs.map(r => r.dataset.id)")]

    def open_row(self, n: int = 0) -> None:
        self.page.click(f"#list-body tr.row >> nth={n}")
        self.page.wait_for_selector("#detail:not([hidden])")

    def detail(self, run: int = 0) -> dict:
        """What the detail view shows for evaluation ``run``."""
        box = f'.detail-run[data-run="{run}"]'
        text = {key: self.page.text_content(f"{box} .detail-{key}")
                for key in ("keyword", "preliminary", "final", "exact", "meteor", "pointing", "line")}  # fmt: skip
        text["question"] = self.page.text_content("#detail-question")
        text["reference"] = self.page.text_content("#detail-reference")
        strip = self.page.query_selector(f"{box} img.strip")
        if strip is not None:
            strip.scroll_into_view_if_needed()
            self.page.wait_for_function("img => img.complete", arg=strip)
            text["strip"] = strip.evaluate("img => [img.naturalWidth, img.naturalHeight, img.getAttribute('src')]")
        return text


def screenshot(eval_dir: Path, out_png: Path) -> Path:
    """The README's screenshot: the viewer of ``eval_dir``, difference questions, one detail view open."""
    from playwright.sync_api import sync_playwright

    from diffvqa.viewer.build import write_viewer

    index = Path(eval_dir) / "viewer" / "index.html"
    if not (index.parent / "data.js").is_file():
        index = write_viewer(eval_dir)
    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch_options())
        try:
            view = ViewerPage(browser, index, width=1400, height=560)
            view.select("f-type", "difference")
            view.page.wait_for_function("[...document.querySelectorAll('img.thumb')].every(i => i.complete)")
            view.page.screenshot(path=str(Path(out_png).with_suffix(".list.png")))
            view.page.set_viewport_size({"width": 1400, "height": 1000})  # room for the whole detail view
            view.open_row(0)
            view.detail()  # waits for the picture strip
            view.page.locator(".detail-box").screenshot(path=str(Path(out_png).with_suffix(".detail.png")))
            _stack([Path(out_png).with_suffix(".list.png"), Path(out_png).with_suffix(".detail.png")], out_png)
            if view.errors or view.network:
                raise RuntimeError(f"console errors {view.errors}, network requests {view.network}")
        finally:
            browser.close()
    return Path(out_png)


def _stack(parts: list[Path], out_png: Path) -> None:
    """The list above the detail view, in one picture; the parts are removed."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in parts]
    sheet = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + 8), (246, 247, 249))
    y = 0
    for image in images:
        sheet.paste(image, (0, y))
        y += image.height + 8
    sheet.save(out_png, optimize=True)
    for part in parts:
        part.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} EVAL_DIR OUT.png")
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))

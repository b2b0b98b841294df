#!/usr/bin/env python3
"""A screenshot of `memorybank web` over a database, for docs/dashboard.md.

    memorybank demo --seconds 120 --db demo.db
    python scripts/dashboard_screenshot.py demo.db docs/dashboard.png

Serves the database with `memorybank web`, opens it in headless Chromium (Debian's, through
Playwright), charts current and voltage from the first session on, and saves the page.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from web_server import WebServer, launch_chromium  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", help="database to show")
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument(
        "--range",
        default="data",
        choices=["data", "10m", "1h", "24h", "7d"],
        help="time range charted (data: from the first session to now)",
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    web = WebServer(args.db)
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(web.url)
            page.wait_for_selector("#metric-picker label[data-metric=voltage]")
            page.locator("#metric-picker label[data-metric=voltage]").click()
            if args.range == "data":
                _, _, sessions = web.get("/api/sessions?limit=10000")
                first = min(s["start_time"] for s in sessions) - 10
                page.locator("#ranges button[data-range='custom']").click()
                page.locator("#custom-since").fill(
                    time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(first))
                )
                page.locator("#custom-until").fill("")
                page.locator("#custom-range button[type=submit]").click()
            else:
                page.locator(f"#ranges button[data-range='{args.range}']").click()
            page.wait_for_function(
                "document.querySelector('#chart').chart?.series.length === 7", polling=100
            )
            page.wait_for_function(
                "document.querySelectorAll('#feed li:not(.empty)').length > 0", polling=100
            )
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        web.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

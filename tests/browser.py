"""A page opened in a real headless Chromium (Debian's, which hack/setup.sh installs), driven
over the DevTools protocol: what a person would see (a screenshot), what the page's DOM holds
once loaded, and every error it raised (console errors, uncaught exceptions, failed loads).

Run as a script, it writes the screenshot of a page: `python -m tests.browser PAGE PNG`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's own probe starts it: no sandbox as root, nothing that reaches the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


@dataclass
class Seen:
    """A page as Chromium rendered it."""

    dom: str
    screenshot: bytes
    errors: list[str] = field(default_factory=list)


async def _open(url: str, width: int, height: int, profile: Path) -> Seen:
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        browser_url = ""
        while not browser_url:
            line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
            if not line:
                raise RuntimeError("Chromium exited before it listened for DevTools")
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            browser_url = found.group(1) if found else ""
        return await _drive(browser_url, url, width, height)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()


async def _drive(browser_url: str, url: str, width: int, height: int) -> Seen:
    ids = itertools.count(1)
    errors: list[str] = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(browser_url, max_msg_size=1 << 28) as ws,
    ):
        pending: dict[int, asyncio.Future[Any]] = {}
        loaded = asyncio.Event()

        async def listen() -> None:
            async for message in ws:
                event = message.json()
                if "id" in event and event["id"] in pending:
                    pending.pop(event["id"]).set_result(event)
                    continue
                method, params = event.get("method"), event.get("params", {})
                if method == "Page.loadEventFired":
                    loaded.set()
                elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                    errors.append(
                        "console: " + " ".join(str(a.get("value")) for a in params["args"])
                    )
                elif method == "Runtime.exceptionThrown":
                    errors.append("exception: " + params["exceptionDetails"].get("text", ""))
                elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                    errors.append("log: " + params["entry"].get("text", ""))

        async def call(method: str, session_id: str | None = None, **params: Any) -> Any:
            number = next(ids)
            pending[number] = asyncio.get_running_loop().create_future()
            await ws.send_json(
                {"id": number, "method": method, "params": params}
                | ({"sessionId": session_id} if session_id else {})
            )
            answer = await asyncio.wait_for(pending[number], 60)
            if "error" in answer:
                raise RuntimeError(f"{method}: {answer['error']}")
            return answer["result"]

        listening = asyncio.create_task(listen())
        try:
            target = await call("Target.createTarget", url="about:blank")
            attached = await call(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            page = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await call(f"{domain}.enable", page)
            await call(
                "Emulation.setDeviceMetricsOverride",
                page,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            await call("Page.navigate", page, url=url)
            await asyncio.wait_for(loaded.wait(), 60)
            dom = await call(
                "Runtime.evaluate", page, expression="document.documentElement.outerHTML"
            )
            shot = await call(
                "Page.captureScreenshot", page, format="png", captureBeyondViewport=True
            )
            return Seen(dom["result"]["value"], base64.b64decode(shot["data"]), errors)
        finally:
            listening.cancel()


def open_page(path: Path, width: int = 1200, height: int = 1600) -> Seen:
    """The page at `path` as Chromium shows it."""
    with tempfile.TemporaryDirectory(prefix="crucible-chromium-") as profile:
        return asyncio.run(_open(path.resolve().as_uri(), width, height, Path(profile)))


def blank(png: bytes) -> bool:
    """Whether a screenshot is all one colour (nothing rendered)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=2)
    return colours is not None and len(colours) == 1


if __name__ == "__main__":
    seen = open_page(Path(sys.argv[1]))
    Path(sys.argv[2]).write_bytes(seen.screenshot)
    print("\n".join(seen.errors) or "no errors", file=sys.stderr)

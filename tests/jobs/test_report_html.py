"""report.html opens in headless Chromium (Debian's `chromium`, installed by `make test`) with every image
rendered, no console error, and nothing fetched from the network. Driven over the DevTools protocol
(aiohttp's websocket client, already installed with Ray)."""

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.jobs.test_evaluate import evaluated  # noqa: F401  (the shared session fixture)

pytestmark = [pytest.mark.e2e]

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]
IMAGES = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                          scheme: i.src.split(':')[0]})),
  fetched: performance.getEntriesByType('resource').map(e => e.name)})"""


async def _inspect(websocket_url: str, page: Path) -> dict:
    import aiohttp

    errors, loaded = [], asyncio.Event()
    async with aiohttp.ClientSession() as session, session.ws_connect(websocket_url, max_msg_size=0) as ws:
        ids = iter(range(1, 1000))
        pending: dict[int, asyncio.Future] = {}

        async def send(method: str, **params):
            message_id = next(ids)
            pending[message_id] = asyncio.get_running_loop().create_future()
            await ws.send_json({"id": message_id, "method": method, "params": params})
            return await pending[message_id]

        async def listen():
            async for message in ws:
                data = json.loads(message.data)
                if "id" in data and data["id"] in pending:
                    pending.pop(data["id"]).set_result(data.get("result", data.get("error")))
                method, params = data.get("method"), data.get("params", {})
                if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                    errors.append(f"console.{params['type']}: {params['args']}")
                elif method == "Runtime.exceptionThrown":
                    errors.append(f"exception: {params['exceptionDetails']}")
                elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                    errors.append(f"log: {params['entry']['text']}")
                elif method == "Page.loadEventFired":
                    loaded.set()

        listener = asyncio.create_task(listen())
        for domain in ("Page", "Runtime", "Log"):
            await send(f"{domain}.enable")
        await send("Page.navigate", url=page.resolve().as_uri())
        await asyncio.wait_for(loaded.wait(), timeout=30)
        await asyncio.sleep(0.5)  # late console messages
        result = await send("Runtime.evaluate", expression=IMAGES, returnByValue=True)
        listener.cancel()
    return {**json.loads(result["result"]["value"]), "errors": errors}


def open_in_chromium(page: Path, profile: Path) -> dict:
    """{"images": [{alt, complete, width, scheme}], "fetched": [urls], "errors": [...]} of `page`."""
    if not CHROMIUM.exists():
        pytest.fail(
            "/usr/bin/chromium is missing: `make browser` (run by `make test`) installs Debian's chromium"
        )
    process = subprocess.Popen(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            targets = json.loads(response.read())
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        return asyncio.run(_inspect(url, page))
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_report_html_renders_every_image_without_errors_or_network(evaluated, tmp_path):  # noqa: F811
    out = evaluated["root"] / "report"
    result = open_in_chromium(out / "report.html", tmp_path / "profile")
    plots = json.loads((out / "report.json").read_text())["plots"]
    assert sorted(i["alt"] for i in result["images"]) == sorted(plots)
    assert all(i["complete"] and i["width"] > 0 and i["scheme"] == "data" for i in result["images"]), result
    assert result["errors"] == []
    assert result["fetched"] == []  # self-contained: no script, stylesheet, font or image fetched


def test_the_check_catches_a_broken_image_and_a_console_error(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img alt="bad" src="data:image/png;base64,AAAA">'
        "<script>console.error('boom')</script></body></html>"
    )
    result = open_in_chromium(page, tmp_path / "profile")
    assert [i["width"] for i in result["images"]] == [0]
    assert any("boom" in e for e in result["errors"])

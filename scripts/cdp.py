"""A small Chrome DevTools Protocol client for headless Chromium, standard library only.

Chromium is started with `--remote-debugging-pipe`: it reads CDP commands from fd 3 and writes replies and
events to fd 4, one NUL-terminated JSON message each (what Puppeteer uses), so no port and no websocket.

    with Browser(1600, 1000) as page:
        page.navigate(url)
        page.wait_for("document.querySelectorAll('tr').length > 3", "the table")
        page.evaluate("document.querySelector('button').click()")
        page.screenshot(Path("shot.png"))
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "chromium"


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page (a tab), driven over CDP."""

    def __init__(self, width: int = 1600, height: int = 1000, timeout: float = 60.0) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self._id = 0
        self._buf = b""
        self._session: str | None = None

    # -- process and transport -------------------------------------------------------------------------------
    def __enter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(prefix="cdp-chromium-")
        to_child_r, self._to_child = os.pipe()  # chromium reads commands on its fd 3
        self._from_child, from_child_w = os.pipe()  # and writes replies on its fd 4

        def _fds() -> None:  # in the child, before exec: put the pipe ends on fds 3 and 4 (inheritable)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]  # never 3 or 4
            for fd, target in zip(high, (3, 4), strict=True):
                os.dup2(fd, target)
                os.close(fd)

        self._proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--mute-audio",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={self.width},{self.height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_fds,
            close_fds=False,  # os.pipe() ends are non-inheritable: only the fds 3 and 4 made above pass exec
        )
        os.close(to_child_r)
        os.close(from_child_w)
        try:
            targets = self.send("Target.getTargets")["targetInfos"]
            page = next((t for t in targets if t["type"] == "page"), None)
            target_id = (
                page["targetId"] if page else self.send("Target.createTarget", url="about:blank")["targetId"]
            )
            self._session = self.send("Target.attachToTarget", targetId=target_id, flatten=True)["sessionId"]
            self.send("Page.enable")
            self.set_size(self.width, self.height)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._proc.poll() is None:
                try:
                    self._session = None
                    self._write({"id": self._next_id(), "method": "Browser.close"})
                    self._proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self._proc.kill()
                    self._proc.wait(timeout=10)
        finally:
            for fd in (self._to_child, self._from_child):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._profile.cleanup()

    def _next_id(self) -> int:
        self._id += 1
        return self._id

    def _write(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._to_child, data) :]

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if not select.select([self._from_child], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise CDPError(f"no reply from chromium within {self.timeout:.0f}s")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise CDPError(f"chromium closed the DevTools pipe (exit code {self._proc.poll()})")
            self._buf += chunk
        message, self._buf = self._buf.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result; events are skipped."""
        message: dict[str, Any] = {"id": self._next_id(), "method": method, "params": params}
        if self._session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        self._write(message)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    # -- page helpers ----------------------------------------------------------------------------------------
    def set_size(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def navigate(self, url: str) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"navigating to {url}: {result['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page (promises awaited) and return its JSON value."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"JavaScript error: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(
        self, expression: str, what: str, timeout: float | None = None, interval: float = 0.25
    ) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value or fail, naming `what`."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
            except CDPError as error:  # e.g. while the page is still being replaced
                last = error
            if last and not isinstance(last, CDPError):
                return last
            time.sleep(interval)
        raise TimeoutError(
            f"timed out after {timeout or self.timeout:.0f}s waiting for {what} (last value: {last!r})"
        )

    def settle(self, seconds: float = 1.0, timeout: float | None = None) -> None:
        """Wait until the page's DOM has not changed for `seconds` (spinners gone, charts drawn)."""
        self.evaluate(
            "window.__cdpMutated = performance.now();"
            "window.__cdpObserver?.disconnect();"
            "window.__cdpObserver = new MutationObserver(() => { window.__cdpMutated = performance.now(); });"
            "window.__cdpObserver.observe(document, {subtree: true, childList: true, attributes: true,"
            " characterData: true}); true"
        )
        self.wait_for(
            f"performance.now() - window.__cdpMutated > {seconds * 1000:.0f}",
            f"the page to stop changing for {seconds:g}s",
            timeout,
        )

    def screenshot(self, png: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        png.write_bytes(base64.b64decode(data))

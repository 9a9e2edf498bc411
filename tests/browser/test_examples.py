"""The notebook example of `hestia.yml`, as shipped, in a real browser: real JupyterLab (from the
test extras) started by the real gateway and reached at `http://notebook.localhost:<port>/`.

Only what a test machine needs differs from the file: the gateway's address and data directory,
the notebook's port and directory (the file's `${NOTEBOOK_PORT}` and `${NOTEBOOK_DIR}`), and the
environment the launcher passes on (this venv's `jupyter` on PATH, Jupyter's own directories in
the test's, and `allow_root` in a Jupyter config file, since CI runs as root and the shipped
command must stay as it is).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, WebSocket, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from hestia.config import load_config
from tests.browser.conftest import ThreadGateway, screenshot
from tests.integration.conftest import free_port

SHIPPED = Path(__file__).parents[2] / "hestia.yml"
START = 90_000  # ms: a cold JupyterLab starts in about 2 s here; the kernel in about 1 s more


@pytest.fixture
def notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadGateway]:
    """The gateway of `hestia.yml`, serving; its notebook service is COLD."""
    jupyter = tmp_path / "jupyter"
    jupyter.mkdir()
    (jupyter / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"allow_root": True}}))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(jupyter))  # also holds workspaces, settings
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    (tmp_path / "notebooks").mkdir()
    config = load_config(SHIPPED, env={"NOTEBOOK_PORT": str(free_port()),
                                       "NOTEBOOK_DIR": str(tmp_path / "notebooks")})
    config = config.model_copy(update={"listen": "127.0.0.1:0", "data_dir": tmp_path / "data",
                                       "grace_period": 2.0})
    gateway = ThreadGateway(config).start()
    try:
        yield gateway
    finally:
        gateway.stop()
        log = tmp_path / "data" / "logs" / "notebook.log"
        if log.exists():  # shown by pytest only when the test failed
            print(log.read_text(errors="replace")[-4000:])


def test_shipped_notebook_opens_jupyterlab_and_runs_code_in_a_kernel(
        notebook: ThreadGateway, page: Page, tmp_path: Path) -> None:
    """JupyterLab opens at the notebook's host name, cold; then opening a notebook (a session
    POSTed with Origin and the XSRF cookie) and running its cell (the kernel's WebSocket, with
    its subprotocol) both pass Jupyter's Host and Origin checks. One test, one JupyterLab."""
    url = f"http://notebook.localhost:{notebook.port}/"
    sockets: list[WebSocket] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    # A file on disk rather than typing into a new notebook: JupyterLab may replace a new
    # notebook's cells once the document has loaded, losing what was typed before.
    (tmp_path / "notebooks" / "answer.ipynb").write_text(json.dumps(ANSWER))
    page.goto(url)
    # Cold: the waiting page (or a held navigation) first, then JupyterLab by itself.
    expect(page.locator(".jp-LauncherCard").first).to_be_visible(timeout=START)
    assert page.url == url + "lab"  # Jupyter's redirect stayed on the notebook's host name
    expect(page.locator(".jp-FileBrowser")).to_be_visible()
    screenshot(page, "jupyterlab", docs=True)

    # Opened from the file browser, as a person does, in the JupyterLab that is loaded: it has
    # its kernel specs by now (the launcher's cards are made from them). Loading the app again
    # at the notebook's URL would race that loading, and JupyterLab, without the specs when it
    # opens the notebook, asks which kernel to start.
    page.locator(".jp-DirListing-item", has_text="answer.ipynb").dblclick()
    cell = page.locator(".jp-Notebook .jp-CodeCell").first
    expect(cell.locator(".cm-content")).to_have_text("print(6 * 7)", timeout=START)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_be_attached(
        timeout=START)
    output = cell.locator(".jp-OutputArea-output")
    # Run from the Run menu, not with a keystroke that can land while JupyterLab moves the
    # focus. JupyterLab can also drop a run asked for while it is still settling the document
    # it just opened (the cell stays "[ ]", the kernel idle): then it is asked again, at most
    # three times. What is asserted stays the same: the cell runs in a kernel that is reached
    # through the gateway, over the kernel's WebSocket.
    for attempt in range(3):
        click_past_kernel_dialog(page, page.get_by_role("menuitem", name="Run", exact=True))
        click_past_kernel_dialog(page, page.get_by_text("Run All Cells", exact=True))
        try:
            expect(output).to_have_text("42", timeout=10_000)
            break
        except AssertionError:
            if attempt == 2:
                raise
    channels = [ws.url for ws in sockets if "/api/kernels/" in ws.url]
    assert channels and all(u.startswith(f"ws://notebook.localhost:{notebook.port}/")
                            for u in channels)


def click_past_kernel_dialog(page: Page, target: Locator) -> None:
    """Click `target`; when the kernel dialog (below) comes first, or while the click waits,
    settle it and click again."""
    for _ in range(4):
        settle_kernel_dialog(page)
        try:
            target.click(timeout=5_000)
            return
        except PlaywrightTimeoutError:
            if not page.locator(".jp-Dialog").count():
                raise
    raise AssertionError("JupyterLab kept showing the kernel dialog")


def settle_kernel_dialog(page: Page) -> None:
    """On a loaded machine JupyterLab can open the notebook before it has the kernel specs, and
    then asks which kernel to start, in a modal dialog that takes every click. A person accepts
    what it proposes (the notebook's own `python3`); so does this. Any other dialog is a
    failure, and its text says which."""
    dialog = page.locator(".jp-Dialog")
    if not dialog.count():
        return
    text = dialog.first.inner_text()
    if "Select Kernel" not in text:
        screenshot(page, "jupyterlab-unexpected-dialog")
        raise AssertionError(f"JupyterLab shows a dialog: {text!r}")
    dialog.locator(".jp-mod-accept").click()
    expect(dialog).to_have_count(0)


ANSWER = {
    "nbformat": 4, "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                "language": "python"}},
    "cells": [{"cell_type": "code", "id": "answer", "metadata": {}, "execution_count": None,
               "outputs": [], "source": "print(6 * 7)"}],
}

"""The quickstart in a real JupyterLab, driven by headless Chromium: the live dashboard draws its
charts while the run goes and freezes on the final state. Everything stays on loopback: the
browser refuses any other address."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

#: Left out of `make test-fast` (see tests/conftest.py).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "docs" / "images" / "lab-quickstart.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """JupyterLab on a free loopback port, serving a copy of the tutorials, with its
    configuration and state kept in ``tmp_path``."""
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "01-quickstart.ipynb", root)
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
    }
    # No "official Jupyter news" prompt (nothing leaves the machine anyway).
    notes = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    notes.mkdir(parents=True)
    (notes / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    # Every cell stays in the page (no windowing), so outputs can be found while off screen.
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly", *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("JupyterLab exited: " + (tmp_path / "lab.log").read_text())
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("JupyterLab did not start: " + (tmp_path / "lab.log").read_text())
        yield f"{base}/lab/tree/01-quickstart.ipynb?token={token}", root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


MARKS = "g.mark-line path, g.mark-rect path, g.mark-area path, g.mark-symbol path"


def test_the_quickstart_runs_in_jupyterlab_and_its_dashboard_draws(
    browser: Any, lab: tuple[str, Path], tmp_path: Path
) -> None:
    url, _root = lab
    origin = url.split("/lab/")[0]
    refused: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()

    def route(r: Any) -> None:
        u = r.request.url
        if u.startswith(origin) or u.startswith("data:") or u.startswith("blob:"):
            r.continue_()
        else:
            refused.append(u)
            r.abort()

    page.route("**/*", route)
    try:
        _drive(page, url, tmp_path)
    except Exception:
        page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
        shown = page.locator(".lp-live").evaluate_all(
            "els => els.map(e => e.parentElement.innerText.slice(0, 200))"
        )
        print("screenshot of the failure:", tmp_path / "failed.png", "dashboards:", shown)
        raise
    finally:
        context.close()
    assert refused == [], refused


def _drive(page: Any, url: str, tmp_path: Path) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    # Lab may ask which kernel to start; then wait until it is up.
    select = page.get_by_role("button", name="Select", exact=True)
    try:
        select.wait_for(timeout=5_000)
        select.click()
    except PlaywrightTimeout:
        pass
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
    # The committed outputs are on screen: restart and run everything afresh.
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    page.get_by_role("menuitem", name="Restart Kernel and Run All Cells…").click()
    page.get_by_role("button", name="Confirm Kernel Restart").or_(
        page.get_by_role("button", name="Restart", exact=True)
    ).first.click()

    # While the run goes, the dashboard redraws with data.
    live = page.locator(".jp-OutputArea-output:has(.lp-live)")
    live.filter(has_text="● running").locator(MARKS).first.wait_for(timeout=60_000)
    running_marks = live.locator(MARKS).count()
    # Then it freezes on the final state, with the summary table under the charts.
    live.filter(has_text="■ completed").wait_for(timeout=120_000)
    page.locator(".jp-Cell").last.scroll_into_view_if_needed()
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    final_marks = live.locator(MARKS).count()
    table = live.locator("table td", has_text="browse").count()
    # The picture opens on the dashboard's charts (its tables run on below them).
    live.first.evaluate("el => el.scrollIntoView({block: 'start'})")
    shot = tmp_path / "lab-quickstart.png"
    page.screenshot(path=str(shot))
    if os.environ.get("LOADPILOT_SAVE_SCREENSHOTS"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    error_text = errors.all_inner_texts()
    # A frame drawn while running holds every series of the rate (achieved, target), latency
    # (p50, p99, max, service p50 and p99) and load (in flight, missed) panels: nine lines.
    assert running_marks >= 9 and final_marks >= 6, (running_marks, final_marks)
    assert table >= 1
    assert not any("Error" in t for t in error_text), error_text

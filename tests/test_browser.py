"""The widgets where people see them: JupyterLab in a real browser.

Starts JupyterLab on 127.0.0.1 (a free port, a random token) in a temporary copy of the
quickstart notebook, drives Debian's headless Chromium through Python playwright (no browser
download: ``executable_path`` points at the system binary), and checks two things:

1. **Live**: run every cell of ``01_quickstart.ipynb``; the pipeline tree of the MoA-Lite run
   renders with its 13 calls and agent names, and no widget error appears. A screenshot of
   the tree goes to ``tests/artifacts/quickstart.png``.
2. **Saved state**: the same notebook executed headless (nbclient, widget state stored) and
   then opened, without running anything, shows its trees from the saved widget state
   (screenshot ``tests/artifacts/quickstart-saved.png``).

Skips with the reason when chromium or playwright is missing. Needs::

    apt-get install -y chromium    # Debian's package: /usr/lib/chromium/chromium
    pip install playwright jupyterlab nbclient
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "notebooks" / "01_quickstart.ipynb"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", "/usr/bin/chromium") if os.access(p, os.X_OK)), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDGET_ERRORS = ("Error displaying widget", "Failed to load model class", "model not found")
AGENTS = ("wizardlm-2-8x22b", "qwen1.5-110b-chat", "qwen1.5-72b-chat", "llama-3-70b-instruct",
          "mixtral-8x22b-instruct", "dbrx-instruct")


def skip_reason() -> str | None:
    if CHROMIUM is None:
        return "Debian's chromium is not installed (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "python playwright is not installed (pip install playwright)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed"
    return None


if skip_reason():
    pytest.skip(skip_reason(), allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_settings(root: Path) -> Path:
    """User settings for this JupyterLab only: every cell attached to the DOM (no virtual
    scrolling, so off-screen trees can be inspected), no news or update checks."""
    d = root / ".lab-settings"
    for plugin, data in {
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        p = d / f"{plugin}.jupyterlab-settings"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data))
    return d


@contextlib.contextmanager
def jupyter_lab(root: Path, env: dict):
    """JupyterLab serving ``root`` on 127.0.0.1 (a free port, a random token, settings of its
    own), started with ``env``; yields (base url, token) once it answers, and stops it after."""
    port, token = free_port(), secrets.token_hex(16)
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
         f"--LabApp.user_settings_dir={lab_settings(root)}", f"--LabApp.workspaces_dir={root / '.workspaces'}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{(root / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 in a temp folder holding the quickstart and a headless-executed,
    trusted copy of it (``saved.ipynb``). Yields (base url, token, folder)."""
    import nbformat
    from nbclient import NotebookClient

    root = tmp_path_factory.mktemp("lab")
    shutil.copy(QUICKSTART, root / QUICKSTART.name)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / ".runtime"), "JUPYTER_DATA_DIR": str(root / ".data"),
           "MOAKIT_TRACES": str(root / "traces.db")}

    nb = nbformat.read(QUICKSTART, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(root)}}).execute()
    nbformat.write(nb, root / "saved.ipynb")
    # a notebook not run in this server is untrusted, and JupyterLab would show the widgets'
    # text fallback; trusting it is what a user does with `jupyter trust` after nbconvert --execute
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(root / "saved.ipynb")], env=env, check=True,
                   capture_output=True)

    with jupyter_lab(root, env) as (base, token):
        yield base, token, root


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_notebook(browser, lab, name):
    base, token, _ = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # a workspace of its own: in the default one JupyterLab reopens the module's earlier notebooks in
    # hidden tabs, whose cells come first in the page (a clean-clone run waited on those hidden ones)
    page.goto(f"{base}/lab/workspaces/{Path(name).stem}/tree/{name}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell >> visible=true", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']:visible", timeout=120_000)
    accept_kernel_dialog(page)
    return page


def accept_kernel_dialog(page) -> None:
    """Under load JupyterLab may ask which kernel to start ("Select Kernel", Python 3 already
    chosen) instead of starting it: accept, as a user would."""
    dialog = page.locator(".jp-Dialog:has-text('Select Kernel')")
    if dialog.count() and dialog.first.is_visible():
        dialog.first.locator(".jp-Dialog-button.jp-mod-accept").click()
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']:visible", timeout=120_000)
    other = page.locator(".jp-Dialog")
    if other.count() and other.first.is_visible():  # anything else JupyterLab asks is a failure: say what
        pytest.fail(f"JupyterLab shows a dialog: {other.first.inner_text()[:500]!r}")


def check_first_tree(page) -> None:
    """The first tree is the MoA-Lite run: 13 call rows, every agent, the totals line."""
    tree = page.locator(".moakit-tree:visible").first
    assert tree.locator("tr.moakit-call").count() == 13
    text = tree.inner_text()
    for agent in AGENTS:
        assert agent in text, f"agent {agent} missing from the tree"
    assert "moa_lite" in text and "13 calls (13 paid, 0 reused)" in text
    assert "step 0 · Propose" in text and "step 1 · Synthesize" in text and "step 2 · Aggregate" in text
    body = page.inner_text("body")
    for err in WIDGET_ERRORS:
        assert err not in body, f"widget error on the page: {err}"


def started(page) -> bool:
    first = page.locator(".jp-CodeCell .jp-InputArea-prompt").first.inner_text().strip()
    return first not in ("[ ]:", "")


def run_all(page, failed: Path = ARTIFACTS / "quickstart-failed.png") -> None:
    """Run -> Run All Cells from the menu; if no cell has started 30 s later, select every
    cell and press Shift+Enter (the same, through the keyboard). ``failed``: the screenshot
    taken when neither starts anything."""
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
    page.click("li.lm-Menu-item:has(div.lm-Menu-itemLabel:text-is('Run All Cells'))")
    for _ in range(30):
        if started(page):
            return
        page.wait_for_timeout(1000)
    page.keyboard.press("Escape")
    page.locator(".jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Control+a")
    page.keyboard.press("Shift+Enter")
    page.wait_for_timeout(5000)
    if not started(page):
        screenshot(page, failed, selector=None)
        pytest.fail("could not start the notebook's cells from the Run menu or the keyboard")


def screenshot(page, path: Path, selector: str | None = ".moakit-tree:visible") -> None:
    """A screenshot of the page with the first ``selector`` scrolled to the top (None: as it is)."""
    if selector:
        page.locator(selector).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(500)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))


def test_quickstart_runs_in_jupyterlab_and_draws_the_tree(lab, browser):
    page = open_notebook(browser, lab, QUICKSTART.name)
    assert page.locator(".moakit-tree").count() == 0  # a clean notebook: nothing drawn yet
    run_all(page)
    n_code = sum(c["cell_type"] == "code" for c in json.loads(QUICKSTART.read_text())["cells"])
    deadline = time.monotonic() + 600
    while True:  # every code cell has run when each shows an execution count and none shows [*]
        prompts = [p.strip() for p in page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]
        # (running all cells from the keyboard adds an empty cell at the end: only the notebook's count)
        if len(prompts) >= n_code and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts[:n_code]):
            break
        if time.monotonic() > deadline:
            screenshot(page, ARTIFACTS / "quickstart-failed.png", selector=None)
            pytest.fail(f"the quickstart did not finish in JupyterLab in 600 s: prompts {prompts}")
        page.wait_for_timeout(2000)
    page.wait_for_timeout(1500)
    assert "Traceback (most recent call last)" not in page.inner_text("body")
    check_first_tree(page)
    # the Shuffle/Dropout run says what it did; the batch view lists the page's pipelines
    assert page.locator(".moakit-tree:has-text('permutation [')").count() >= 1
    batch = page.inner_text(".moakit-batch")
    assert "9 runs" in batch and "together_moa" in batch and "refine_pipeline" in batch
    # a call's prompt unfolds on click
    agg = page.locator(".moakit-tree:visible").first.locator("tr.moakit-call details").last
    agg.locator("summary").click()
    assert "You have been provided with a set of responses" in agg.inner_text()
    screenshot(page, ARTIFACTS / "quickstart.png")
    page.close()


def test_executed_quickstart_shows_its_widgets_from_saved_state(lab, browser):
    page = open_notebook(browser, lab, "saved.ipynb")
    page.wait_for_selector(".moakit-tree", timeout=90_000)
    # saved widget views render one after another: wait for all four trees, not just the first
    try:
        page.wait_for_function("document.querySelectorAll('.moakit-tree').length >= 4", timeout=90_000)
    except Exception:  # noqa: BLE001 - the assertion below says what was found
        pass
    assert page.locator(".moakit-tree").count() >= 4
    check_first_tree(page)
    # nothing ran: every execution count is the one saved by the headless run
    _, _, root = lab
    saved = json.loads((root / "saved.ipynb").read_text())
    counts = [c["execution_count"] for c in saved["cells"] if c["cell_type"] == "code"]
    last = f"[{counts[-1]}]:"
    try:  # on a loaded machine the last cells are drawn a while after the first tree
        page.wait_for_function("t => [...document.querySelectorAll('.jp-InputArea-prompt')]"
                               ".some(e => e.innerText.trim() === t)", arg=last, timeout=60_000)
    except Exception:  # noqa: BLE001 - the assertion below says what was found
        pass
    assert last in page.locator(".jp-InputArea-prompt").all_inner_texts()
    screenshot(page, ARTIFACTS / "quickstart-saved.png")
    page.close()


# ---- saved notebooks, opened with no kernel; the same as nbconvert HTML ----------------------------
#: notebook -> (the views' CSS classes that must show, words that must be read in them, runs in its BatchView)
SHARED = {
    "03_positional_bias.ipynb": ({"moakit-bias": ("excess over chance", "95% interval", "what the columns mean"),
                                  "moakit-batch": ("10 runs", "run #1"), "moakit-progress": ("100%", "10/10")}, 10),
    "04_ablation.ipynb": ({"moakit-ablation": ("(the baseline) scores", "calls reused", "difference from"),
                           "moakit-batch": ("24 runs", "run #1"), "moakit-progress": ("variants", "100%")}, 24),
    "05_impact.ipynb": ({"moakit-impact": ("Table 4 layout", "Pairwise contrasts", "what the columns mean")}, None),
}
BROKEN = ("Error displaying widget", "model not found", "Failed to load model class")


def check_views(page, name: str, shown: str, where: str) -> None:
    """Each of ``name``'s views (SHARED) has a static copy on the page (``shown``: a selector
    suffix, ":visible" where hidden copies exist) holding its words, the BatchView lists every
    run, and no widget error is written on the page. ``where`` names the page in messages."""
    views, runs = SHARED[name]
    body = page.inner_text("body")
    for err in BROKEN:
        assert err not in body, f"{name}: {err} in {where}"
    for cls, words in views.items():
        copies = page.locator(f".moakit-static.{cls}{shown}")
        assert copies.count() >= 1, f"{name}: no {cls} in {where}"
        text = " ".join(copies.all_inner_texts())
        for w in words:
            assert w in text, f"{name}: {w!r} not in {where}'s {cls}"
    if runs:  # every run's summary is in the saved BatchView
        assert page.locator(f".moakit-static.moakit-batch{shown} tr.moakit-row").count() == runs, where


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Notebooks 03, 04 and 05 executed headless (nbclient, widget state stored, as
    ``jupyter nbconvert --execute`` does) and trusted. ``MOAKIT_EXECUTED_NOTEBOOKS=<folder>``
    reuses notebooks executed earlier from that folder (a quicker rerun while working)."""
    import nbformat
    from nbclient import NotebookClient

    root = tmp_path_factory.mktemp("saved")
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / ".runtime"), "JUPYTER_DATA_DIR": str(root / ".data")}
    earlier = os.environ.get("MOAKIT_EXECUTED_NOTEBOOKS")
    for name in SHARED:
        if earlier and (Path(earlier) / name).exists():
            shutil.copy(Path(earlier) / name, root / name)
        else:
            nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
            NotebookClient(nb, timeout=1800, kernel_name="python3", store_widget_state=True,
                           resources={"metadata": {"path": str(root)}}).execute()
            nbformat.write(nb, root / name)
        subprocess.run([sys.executable, "-m", "jupyter", "trust", str(root / name)], env=env, check=True,
                       capture_output=True)
    return root, env


@pytest.fixture(scope="module")
def lab_without_kernel(executed):
    """JupyterLab serving the executed notebooks; each test shuts the kernel it opens down."""
    root, env = executed
    with jupyter_lab(root, env) as (base, token):
        yield base, token, root


def _no_kernel(lab) -> None:
    """Shut every kernel of the server down (a notebook opened, then left with no kernel: what a
    reader has who opens a shared notebook without running it, and what widgets see there)."""
    base, token, _ = lab
    deadline = time.monotonic() + 60
    while True:  # the notebook's kernel starts a little after the page opens
        sessions = json.loads(urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10).read())
        if sessions or time.monotonic() > deadline:
            break
        time.sleep(1)
    for s in sessions:
        req = urllib.request.Request(f"{base}/api/sessions/{s['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(req, timeout=10).read()


def _visible_broken(page) -> int:
    """Widgets drawn with JupyterLab's red broken-link icon (disconnected from a kernel) that show."""
    return page.evaluate("""() => [...document.querySelectorAll('.jupyter-widgets-disconnected')]
        .filter(e => e.offsetParent !== null && getComputedStyle(e).display !== 'none'
                && getComputedStyle(e, '::before').content !== 'none').length""")


@pytest.mark.parametrize("name", list(SHARED))
def test_saved_notebook_reads_with_no_kernel_in_jupyterlab(lab_without_kernel, browser, name):
    base, token, root = lab_without_kernel
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # a workspace of its own: JupyterLab would otherwise reopen the earlier notebooks in hidden tabs
    page.goto(f"{base}/lab/workspaces/{name.removesuffix('.ipynb')}/tree/{name}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell >> visible=true", timeout=90_000)
    _no_kernel(lab_without_kernel)
    views = SHARED[name][0]
    for cls in views:  # a notebook with many outputs takes a while on a loaded machine
        page.wait_for_selector(f".moakit-static.{cls}", state="attached", timeout=180_000)
    # charts draw after JupyterLab loads its Vega renderer
    page.wait_for_selector(".jp-RenderedVegaCommon5, .vega-embed, .jp-RenderedSVG", state="attached",
                           timeout=120_000)
    page.wait_for_timeout(4000)  # saved widget views and Vega charts draw one after another
    check_views(page, name, ":visible", "the saved notebook")
    # the charts: drawn by JupyterLab's own Vega (no network), or as the saved SVG
    charts = page.locator(".jp-RenderedVegaCommon5, .vega-embed, .jp-RenderedSVG, .jp-RenderedImage")
    assert charts.count() >= 1, f"{name}: no chart drawn"
    assert _visible_broken(page) == 0, f"{name}: broken-link icons show"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for cls in views:  # a screenshot of each view as a reader of the saved notebook sees it
        page.locator(f".moakit-static.{cls}:visible").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(800)
        page.screenshot(path=str(ARTIFACTS / f"saved-{name.removesuffix('.ipynb')}-{cls}.png"))
    page.close()


@pytest.mark.parametrize("name", list(SHARED))
def test_saved_notebook_as_nbconvert_html_holds_the_same_content(executed, browser, name):
    """``jupyter nbconvert --to html`` of the executed notebook, opened from a file with the
    network off: the views' content is there, the charts are the SVG fallback."""
    root, env = executed
    out = root / "html"
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--output-dir", str(out),
                    str(root / name)], env=env, check=True, capture_output=True)
    html_file = out / name.replace(".ipynb", ".html")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.route("http*://**", lambda route: route.abort())  # offline: no CDN
    page.goto(html_file.as_uri())
    page.wait_for_timeout(1500)
    check_views(page, name, "", "the HTML")
    assert page.locator("svg.marks, img[src^='data:image/svg+xml']").count() >= 1, f"{name}: no chart drawn"
    shot = ARTIFACTS / f"nbconvert-{name.removesuffix('.ipynb')}.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()


LIVE_CELLS = [
    "import tempfile\nfrom pathlib import Path\nimport moakit\nfrom moakit import Aggregate, Propose\n"
    "from moakit.testing.stub_server import StubServer\n"
    "stub = StubServer(latency=1.0).__enter__()\n"
    "models = {a: stub.model(a) for a in ('a', 'b', 'c', 'd', 'agg')}\n"
    "store = moakit.TraceStore(Path(tempfile.mkdtemp()) / 'live.db')",
    "r = moakit.run([Propose(['a', 'b', 'c', 'd']), Aggregate('agg')], 'Name a colour.', models=models,\n"
    "               store=store, max_concurrency=1, live=True)",
    "stub.__exit__(None, None, None)\nr.ok",
]


def test_a_live_run_fills_in_its_tree_in_jupyterlab(lab, browser):
    """A run with ``live=True`` (four proposers one at a time, a second each): the tree is on
    the page before the run ends and gains rows as calls finish."""
    import nbformat

    _, _, root = lab
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in LIVE_CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "live.ipynb")
    page = open_notebook(browser, lab, "live.ipynb")
    run_all(page)
    counts = []
    shot = False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        live = page.locator(".moakit-tree-live")
        n = live.first.locator("tr.moakit-call").count() if live.count() else -1
        counts.append(n)
        if 1 <= n < 5 and not shot:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            live.first.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.screenshot(path=str(ARTIFACTS / "live-run-in-flight.png"))
            shot = True
        if n == 5 and "✓ ok" in live.first.inner_text():
            break
        page.wait_for_timeout(300)
    grew = [c for c in dict.fromkeys(counts) if c >= 0]
    assert grew[-1] == 5, counts
    assert len([c for c in grew if 0 <= c < 5]) >= 3, f"the tree did not fill in call by call: {grew}"
    assert grew == sorted(grew)
    assert "Traceback (most recent call last)" not in page.inner_text("body")
    assert _visible_broken(page) == 0
    page.screenshot(path=str(ARTIFACTS / "live-run-done.png"))
    page.close()


def test_a_chart_shows_its_tooltip_in_jupyterlab_offline(lab_without_kernel, browser):
    """JupyterLab draws the Vega-Lite bundle with its own Vega (no network: every request off
    the local server is refused); moving the mouse over the positional-bias chart brings up a
    tooltip that says what the figure is."""
    base, token, _ = lab_without_kernel
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base) else route.abort())
    name = "03_positional_bias.ipynb"
    page.goto(f"{base}/lab/workspaces/tooltips/tree/{name}?token={token}&reset")
    chart = page.locator(".jp-RenderedVegaCommon5 .marks >> visible=true").first  # what Vega drew (canvas or svg)
    chart.wait_for(timeout=180_000)
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(1000)
    box = chart.bounding_box()
    tip = page.locator("#vg-tooltip-element.visible")
    found = ""
    for j in range(4, 60, 3):  # sweep the plot until a mark is under the mouse
        for i in range(4, 96, 2):
            page.mouse.move(box["x"] + box["width"] * i / 100, box["y"] + box["height"] * j / 100)
            if tip.count():
                found = tip.inner_text()
                break
        if found:
            break
    assert found, "no tooltip came up over the chart"
    assert "excess over chance" in found or "share" in found, found
    page.close()

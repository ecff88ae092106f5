"""JupyterLab in a real browser, the way a learner meets the workbook.

`make lab` (the README's first command, so the command a learner types is the one tested) serves copies of
notebooks 00 and 02 on 127.0.0.1 with a random token and VLMLAB_PROFILE=smoke; Debian's Chromium, driven by
Playwright, opens each notebook, runs every cell from the Run menu, checks that no cell failed, then works the
widgets (moves a slider, types labels and a caption) and checks that their output changes. Screenshots go to
the test's temp dir. Skipped when Playwright or a Chromium binary is missing (`.ci/run` installs Chromium as root;
Playwright's own browser download is not used).
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 300  # Run All on the smoke profile: 15 s (00) and 25 s (02) on 2 quiet cores, 2 min for 02 when busy
WIDGET_TIMEOUT_MS = 60_000
NOTEBOOK = ".jp-NotebookPanel:visible"  # the notebook in the active tab

pytestmark = pytest.mark.slow


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, url: str, token: str, root: Path):
        self.url, self.token, self.root = url, token, root

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def kernel_ready(self, name: str) -> bool:
        """The notebook's kernel is idle and the browser is connected to it (Run All before that runs nothing)."""
        return any(s["path"] == name and s["kernel"]["execution_state"] == "idle" and s["kernel"]["connections"] > 0
                   for s in self.api("/api/sessions"))

    def shut_down_kernels(self) -> None:
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`make lab` serving copies of notebooks 00 and 02 (the committed notebooks are never saved over)."""
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if not _chromium():
        pytest.skip("no Chromium binary: apt-get install chromium (the JupyterLab browser test needs a real browser)")
    if not shutil.which("make"):
        pytest.skip("make is not installed: the test starts the server with `make lab`")
    venv = Path(sys.prefix)
    if not (venv / "bin" / "jupyter").exists():
        pytest.skip(f"no jupyter in {venv}: install the `lab` extra")

    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    for name in ("00_shapes_world.ipynb", "02_contrastive_clip.ipynb"):
        shutil.copy(REPO / "notebooks" / name, root / name)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, VLMLAB_PROFILE="smoke",  # PROFILE = "auto" in the notebooks resolves to smoke
               VLMLAB_CACHE=str(tmp / "cache"), VLMLAB_RUN_DIR=str(tmp / "run"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about Jupyter news?" toast over the screenshots
    env.pop("MPLBACKEND", None)  # CI sets Agg; a learner's kernel uses the inline backend
    lab_args = (f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.token={token} "
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    # `-o setup`: the virtualenv running this test is the one to use; never reinstall it from a test
    command = ["make", "--no-print-directory", "-o", "setup", "lab", f"VENV={venv}", f"LAB_DIR={root}", f"LAB_ARGS={lab_args}"]
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, root)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                lab.api("/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"`{' '.join(command)}` did not serve JupyterLab:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        print(f"\nJupyterLab: {lab.url}/lab (log: {log_path})")
        yield lab
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # jupyter shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(lab, browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WIDGET_TIMEOUT_MS)
    yield page
    context.close()
    lab.shut_down_kernels()


class Shots:
    """Numbered screenshots in the test's temp dir; each path is printed (pytest -s shows them)."""

    def __init__(self, folder: Path):
        self.folder, self.n = folder, 0

    def __call__(self, page, name: str, widget=None) -> Path:
        """The browser window; with `widget`, scrolled so that the widget starts at the top of the notebook."""
        if widget is not None:
            widget.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(300)
        self.n += 1
        path = self.folder / f"{self.n:02d}_{name}.png"
        page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path


def _run_all(page, lab: Lab, name: str, shots: Shots) -> None:
    """Open `name` in JupyterLab, Run > Run All Cells, wait for the kernel, save (Ctrl+S); fail on any error."""
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
    page.locator(f"{NOTEBOOK} .jp-Notebook .jp-Cell").first.wait_for()
    deadline = time.monotonic() + 120
    while not lab.kernel_ready(name):
        assert time.monotonic() < deadline, f"{name}: no kernel connected after 120 s"
        select = page.locator(".jp-Dialog button", has_text="Select")  # if JupyterLab asks which kernel: its choice
        if select.count():
            select.first.click()
        page.wait_for_timeout(500)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

    prompts = page.locator(f"{NOTEBOOK} .jp-CodeCell .jp-InputPrompt")
    start = time.monotonic()
    # text_content, not inner_text: JupyterLab skips rendering off-screen cells (content-visibility)
    while "[*]:" in (texts := [t.strip() for t in prompts.all_text_contents()]) or texts.count("[ ]:") == len(texts):
        if time.monotonic() - start > (RUN_TIMEOUT_S if texts.count("[ ]:") < len(texts) else 30):
            shots(page, f"{Path(name).stem}_timeout")
            pytest.fail(f"{name}: Run All did not finish in {RUN_TIMEOUT_S} s (or start in 30 s); prompts {texts}")
        page.wait_for_timeout(500)
    print(f"{name}: Run All took {time.monotonic() - start:.1f} s")
    shots(page, f"{Path(name).stem}_ran")

    # an error output is rendered like stderr (tqdm and warnings write there too): look for its traceback
    outputs = page.locator(f'{NOTEBOOK} .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    tracebacks = [t for t in outputs.all_text_contents() if "Traceback (most recent call last)" in t]
    assert not tracebacks, f"{name} failed in the browser:\n" + "\n\n".join(t[-3000:] for t in tracebacks)
    unrun = [i for i, t in enumerate(texts) if not re.fullmatch(r"\[\d+\]:", t)]
    assert not unrun, f"{name}: code cells {unrun} did not run (Run All stops at an error): {texts}"

    # save as a learner does, then read what was written: every code cell executed, no error output
    path = lab.root / name
    before = path.stat().st_mtime_ns
    page.locator(f"{NOTEBOOK} .jp-Notebook").click(position={"x": 5, "y": 5})  # focus the notebook, command mode
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before:
        assert time.monotonic() < deadline, f"{name}: Ctrl+S did not save the notebook"
        time.sleep(0.2)
    time.sleep(0.5)  # the server writes atomically; let it finish
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert all(c.execution_count for c in cells), f"{name}: saved with unexecuted code cells"
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: saved with errors: {[(e.ename, e.evalue) for e in errors]}"


def _text_box(widget, label: str):
    return widget.locator(".widget-text", has=widget.page.locator(f'label:text-is("{label}")')).locator("input")


def _type(box, text: str) -> None:
    box.fill(text)  # an `input` event: ipywidgets' Text syncs its value (continuous_update)
    box.press("Enter")


def test_notebook_00_runs_in_jupyterlab_and_the_scene_explorer_answers(lab, page, tmp_path):
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    _run_all(page, lab, "00_shapes_world.ipynb", shots)

    index = page.locator(".widget-slider", has=page.locator('label:text-is("index")'))
    explorer = page.locator(f"{NOTEBOOK} .widget-hbox", has=index).last
    image, panel = explorer.locator("img").first, explorer.locator(".widget-html-content").last
    expect(image).to_have_attribute("src", re.compile(r".+"))
    expect(panel).to_contain_text("scene graph")
    shots(page, "scene_explorer_index_0", explorer)
    src, text = image.get_attribute("src"), panel.inner_text()

    index.locator(".noUi-handle").focus()
    page.keyboard.press("ArrowRight")  # the learner moves the slider: index 0 -> 1
    expect(index.locator(".widget-readout")).to_have_text("1")
    expect(panel).not_to_have_text(text)
    expect(image).not_to_have_attribute("src", src)
    shots(page, "scene_explorer_index_1", explorer)


def test_notebook_02_runs_in_jupyterlab_and_its_playgrounds_answer(lab, page, tmp_path):
    from playwright.sync_api import expect

    shots = Shots(tmp_path)
    _run_all(page, lab, "02_contrastive_clip.ipynb", shots)

    labels = page.locator(".widget-text", has=page.locator('label:text-is("labels")'))
    playground = page.locator(f"{NOTEBOOK} .widget-vbox", has=labels).last
    table = playground.locator(".widget-html-content table").last
    expect(table).to_contain_text("circle")
    shots(page, "zero_shot_shapes", playground)

    _type(_text_box(playground, "labels"), "red, green, blue, yellow")
    expect(table).not_to_contain_text("circle")
    for colour in ("red", "green", "blue", "yellow"):
        expect(table).to_contain_text(colour)
    probabilities = [float(x) for x in re.findall(r"\b[01]\.\d{3}\b", table.inner_text())]
    assert len(probabilities) == 4 and abs(sum(probabilities) - 1) < 0.01, probabilities
    shots(page, "zero_shot_colours", playground)

    caption = page.locator(".widget-text", has=page.locator('label:text-is("caption")'))
    gallery = page.locator(f"{NOTEBOOK} .widget-vbox", has=caption).last
    scores = gallery.locator(".widget-html-content center")
    expect(scores.first).to_be_visible()
    before = scores.all_text_contents()
    shots(page, "retrieval_default_caption", gallery)

    _type(_text_box(gallery, "caption"), "a small green triangle")
    deadline = time.monotonic() + WIDGET_TIMEOUT_MS / 1000
    while (after := scores.all_text_contents()) == before or len(after) != len(before):
        assert time.monotonic() < deadline, f"the retrieval gallery did not answer the new caption: {after}"
        page.wait_for_timeout(200)
    shots(page, "retrieval_green_triangle", gallery)

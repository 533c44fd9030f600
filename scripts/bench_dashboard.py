"""Dashboard latency on CPU: resnet18 with random weights (``--weights none``), the app as it
is now (``dashboard/app.py``) beside the app before the caching work (``dashboard/app.py`` at
commit 8bdcb28, written to a temporary folder), against the goals of the issue:

* moving the channel slider: ≤ 0.3 s (now: the one-channel view's "Channel" slider, inside an
  ``st.fragment``; before there was no one-channel view, so its nearest equivalent is timed:
  shifting the "Channels" range slider of the grid by one channel);
* switching the CAM class: ≤ 1.0 s (now: "cam_class", any of the classes; before:
  "cam_target", one of the top 5);
* switching the layer: ≤ 1.0 s (now: "layer" in the Layers tab, which every tab uses, so the
  Activations, Filters and CAM tabs all follow it; before: "layer" of the Activations tab, the
  CAM tab having its own).

Two ways of timing:

* ``apptest``: streamlit.testing.v1.AppTest, in this process. After an untimed first run (model
  load) each round sets a widget and times ``.run()``. AppTest cannot run a fragment alone: it
  reruns the whole script for every interaction, so its channel-slider time is an upper bound
  for the fragment (the row "rerun, nothing changed" is the whole-script floor). "cold" is a
  value not yet shown in the session (a class or layer the caches have not seen), "warm" one
  shown before (back to the first class; back to the default layer). The rounds interleave
  the interactions, so drift in the machine's speed hits them alike; medians and maxima.
* ``browser``: the real server (``python -m vistool dashboard --headless --model resnet18``) and
  headless Chromium through Playwright, the sidebar's Weights set to "none" through the page
  (the command has no --weights). Time from the interaction (Streamlit's R shortcut, a full
  rerun; ArrowRight on the Channel slider's thumb; choosing a class in the CAM tab; choosing a
  layer in the Layers tab) to three points: the page's rerun request (BackMsg rerun_script) and
  the server's end-of-script message (ForwardMsg script_finished), both read off the page's
  websocket, and the page being done: the app's script state back to ``notRunning``
  (``[data-testid=stApp][data-test-script-state]``, which Streamlit's own e2e tests wait on; a
  fragment run counts) with every image loaded, in the page's clock. The gap between the last
  two is the browser's rendering (on the same CPUs as the server). Needs ``playwright`` and
  ``/usr/bin/chromium``, else the part says it is skipped. Only the current app.

    python scripts/bench_dashboard.py [--rounds 5] [--parts apptest,browser] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboard" / "app.py"
BEFORE_COMMIT = "8bdcb28"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MODEL, WEIGHTS = "resnet18", "none"
GOALS = {"channel": 0.3, "class": 1.0, "layer": 1.0}
# (row key, label, goal key); rows absent from an app print as "-"
ROWS = [("noop", "rerun, nothing changed", None),
        ("channel", "channel slider, one step", "channel"),
        ("class cold", "CAM class, new class", "class"),
        ("class warm", "CAM class, back to the first", "class"),
        ("layer cold", "layer, new layer", "layer"),
        ("layer warm", "layer, back to default", "layer")]
Times = dict[str, list[float]]


# ---------------------------------------------------------------- AppTest

@dataclass
class AppVersion:
    """One version of the app and its widgets' keys (``channel_range``: the channel slider is
    a range)."""

    name: str
    path: Path
    channel_key: str
    channel_range: bool
    class_key: str
    layer_key: str


def run_timed(at, timeout: float) -> float:
    start = time.perf_counter()
    at.run(timeout=timeout)
    elapsed = time.perf_counter() - start
    if at.exception:
        raise RuntimeError("the app raised: " + "; ".join(e.message for e in at.exception))
    if at.error:
        raise RuntimeError("the app shows an error: " + "; ".join(e.value for e in at.error))
    return elapsed


def layer_order(names: list[str], default: str) -> list[str]:
    """Layers to visit cold: resnet18's blocks (layer3, layer2, layer1, then their halves),
    then any other layer with a grid; never the default layer."""
    blocks = ([f"layer{i}" for i in (3, 2, 1, 4)]
              + [f"layer{i}.{j}" for j in (0, 1) for i in (4, 3, 2, 1)])
    rest = [n for n in names[::-1] if n not in blocks and n not in ("fc", "avgpool", "flatten")]
    return [n for n in blocks + rest if n in names and n != default]


def bench_apptest(app: AppVersion, rounds: int, timeout: float) -> Times:
    """Each round: a rerun with nothing changed, one step of the channel slider, a new class
    then back to the first one (at the default layer), a new layer then back to the default
    layer."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(app.path), default_timeout=timeout)
    at.run(timeout=timeout)
    at.text_input(key="model").input(MODEL)
    at.text_input(key="weights").input(WEIGHTS)
    start = time.perf_counter()
    run_timed(at, timeout)
    print(f"  {app.name}: first run with {MODEL}, weights {WEIGHTS}: "
          f"{time.perf_counter() - start:.2f} s (untimed warm-up)", flush=True)

    layer_box = at.selectbox(key=app.layer_key)
    default_layer = layer_box.value
    cold_layers = layer_order([str(o) for o in layer_box.options], default_layer)
    classes = at.selectbox(key=app.class_key)
    class_count = len(classes.options)
    base_class = classes.index  # the class the page opens on (the top one)
    times: Times = {key: [] for key, _, _ in ROWS}

    def step(row: str, action: Callable[[], object]) -> None:
        action()
        times[row].append(run_timed(at, timeout))

    def check(key: str, attribute: str, expected) -> None:
        found = getattr(at.selectbox(key=key), attribute)
        if found != expected:
            raise RuntimeError(f"selectbox {key!r}: {attribute} {found!r}, not {expected!r}")

    def move_channel() -> None:
        slider = at.slider(key=app.channel_key)
        value, top = slider.value, slider.max
        if app.channel_range:
            lo, hi = value
            slider.set_value((lo + 1, hi + 1) if hi < top else (0, hi - lo))
        else:
            slider.set_value(value + 1 if value < top else 0)

    for r in range(rounds):
        step("noop", lambda: None)
        step("channel", move_channel)
        # a class not shown yet (the before app offers the top 5 only: it cycles through them)
        new_class = (base_class + 1 + r % (class_count - 1)) % class_count
        step("class cold", lambda c=new_class: at.selectbox(key=app.class_key).select_index(c))
        check(app.class_key, "index", new_class)
        step("class warm", lambda: at.selectbox(key=app.class_key).select_index(base_class))
        check(app.class_key, "index", base_class)
        layer = cold_layers[r % len(cold_layers)]
        step("layer cold", lambda n=layer: at.selectbox(key=app.layer_key).select(n))
        check(app.layer_key, "value", layer)
        step("layer warm", lambda: at.selectbox(key=app.layer_key).select(default_layer))
        check(app.layer_key, "value", default_layer)
        print(f"  {app.name}: round {r + 1}/{rounds} (new layer {layer}, new class "
              f"{new_class}): "
              + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()), flush=True)
    return times


def before_app(folder: Path) -> AppVersion | None:
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BEFORE_COMMIT}:dashboard/app.py"],
            check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"  before: skipped: cannot read dashboard/app.py at {BEFORE_COMMIT}: {exc}")
        return None
    path = folder / "app.py"
    path.write_text(source)
    return AppVersion(f"before ({BEFORE_COMMIT})", path, "channels", True, "cam_target", "layer")


# ---------------------------------------------------------------- browser

WATCH_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (window.__benchApp === app) return;
  window.__benchApp = app;
  window.__benchStarted = window.__benchStarted || 0;
  window.__benchDone = window.__benchDone || 0;
  let last = app.getAttribute('data-test-script-state');
  new MutationObserver(() => {
    const state = app.getAttribute('data-test-script-state');
    if (state !== 'notRunning' && last === 'notRunning') window.__benchStarted += 1;
    if (state === 'notRunning' && last !== 'notRunning') {
      window.__benchDone += 1; window.__benchDoneAt = performance.now();
    }
    last = state;
  }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""
# perf_counter() of each rerun request the page sends and each script_finished message it
# receives (before it renders), off the page's websocket
SENT: list[float] = []
FINISHED: list[float] = []


def watch_websocket(ws) -> None:
    from google.protobuf.message import DecodeError
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    def note(kind, wanted: str, times: list[float]) -> Callable[[object], None]:
        def frame(payload) -> None:
            if isinstance(payload, str):
                return
            msg = kind()
            with contextlib.suppress(DecodeError):
                msg.ParseFromString(payload)
                if msg.WhichOneof("type") == wanted:
                    times.append(time.perf_counter())
        return frame

    ws.on("framesent", note(BackMsg, "rerun_script", SENT))
    ws.on("framereceived", note(ForwardMsg, "script_finished", FINISHED))


IMAGES_JS = "() => Array.from(document.images).every(i => i.complete)"
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server ended with {server.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"the server did not answer within {seconds:.0f} s")


def timed_interaction(page, what: str, action: Callable[[], object], timeout_ms: float
                      ) -> tuple[float, float, float]:
    """Seconds from ``action`` to the page's rerun request, to the server's end-of-script
    message reaching the page, and to the page's end of the rerun (script state back to
    notRunning, every image loaded)."""
    page.evaluate(WATCH_JS)
    started, done = page.evaluate("[window.__benchStarted, window.__benchDone]")
    seen, asked = len(FINISHED), len(SENT)
    start = page.evaluate("performance.now()")
    clock = time.perf_counter()
    action()
    try:
        page.wait_for_function(f"window.__benchStarted > {started} || "
                               f"window.__benchDone > {done}", timeout=15_000)
    except Exception as exc:
        raise RuntimeError(f"{what}: no rerun started within 15 s") from exc
    try:
        page.wait_for_function(f"window.__benchDone > {done}", timeout=timeout_ms)
    except Exception as exc:
        raise RuntimeError(f"{what}: the rerun did not end within {timeout_ms / 1000:.0f} s"
                           ) from exc
    ran = (page.evaluate("window.__benchDoneAt") - start) / 1000
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    page.wait_for_function(IMAGES_JS, timeout=timeout_ms)
    shown = (page.evaluate("performance.now()") - start) / 1000
    nan = float("nan")
    request = SENT[asked] - clock if len(SENT) > asked else nan
    server = FINISHED[seen] - clock if len(FINISHED) > seen else nan
    return request, server, max(ran, shown)


def settle(page, timeout_ms: float) -> None:
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def bench_browser(rounds: int, threads: int, timeout: float) -> dict[str, list[tuple]] | None:
    if importlib.util.find_spec("playwright") is None:
        print("  browser: skipped: playwright is not installed (pip install playwright)")
        return None
    if not Path(CHROMIUM).exists():
        print(f"  browser: skipped: no Chromium at {CHROMIUM}")
        return None
    with tempfile.TemporaryFile("w+", prefix="bench-dashboard-", suffix=".log") as log:
        return serve_and_time(log, rounds, threads, timeout)


def serve_and_time(log, rounds: int, threads: int, timeout: float
                   ) -> dict[str, list[tuple]] | None:
    """Start the server (output to ``log``), open the page, set the weights, time the rounds;
    SIGTERM stops the server whatever happens."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {**os.environ, "STREAMLIT_SERVER_ADDRESS": "127.0.0.1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "vistool", "dashboard", "--headless",
                               "--port", str(port), "--model", MODEL],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    timeout_ms = timeout * 1000
    times: dict[str, list[tuple]] = {key: [] for key, _, _ in ROWS}
    try:
        wait_healthy(port, server, 60)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1400})
                page.on("websocket", watch_websocket)
                page.set_default_timeout(30_000)  # finding things; reruns get timeout_ms
                start = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_selector('[data-testid="stApp"]'
                                       '[data-test-connection-state="CONNECTED"]',
                                       timeout=timeout_ms)
                settle(page, timeout_ms)
                weights = page.get_by_role("textbox", name="Weights", exact=True)
                weights.fill(WEIGHTS)
                weights.press("Enter")
                page.get_by_text("Weights: random", exact=False).first.wait_for(
                    timeout=timeout_ms)
                settle(page, timeout_ms)
                print(f"  browser: page with {MODEL}, weights {WEIGHTS}: "
                      f"{time.perf_counter() - start:.2f} s (untimed warm-up)", flush=True)
                browser_rounds(page, rounds, timeout_ms, times)
            finally:
                browser.close()
    except Exception as exc:  # reported with the server's log
        log.flush()
        log.seek(0)
        tail = log.read()[-2000:]
        print(f"  browser: failed: {type(exc).__name__}: {exc}\n  server log tail:\n{tail}")
        return times if any(times.values()) else None
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return times


def combobox(page, label: str):
    return page.locator('[data-testid="stSelectbox"]').filter(
        has=page.get_by_text(label, exact=True)).get_by_role("combobox")


def choose(page, label: str, typed: str, option: re.Pattern, timeout_ms: float
           ) -> tuple[float, float]:
    """Type ``typed`` into a select box (untimed), then time clicking the option whose name
    matches ``option``; checks that the box shows it afterwards."""
    box = combobox(page, label)
    box.fill(typed)
    item = page.get_by_role("option", name=option).first
    item.wait_for()
    name = item.inner_text().strip()
    result = timed_interaction(page, f"{label!r} to {name!r}", item.click, timeout_ms)
    if box.input_value() != name:
        raise RuntimeError(f"{label!r} shows {box.input_value()!r}, not {name!r}")
    return result


def browser_rounds(page, rounds: int, timeout_ms: float, times: dict[str, list[tuple]]) -> None:
    def tab(name: str) -> None:
        page.get_by_role("tab", name=name, exact=True).click()

    tab("Activations")
    caption = page.get_by_text("choose it in the Layers tab").first.inner_text()
    default_layer = re.match(r"layer (\S+) ", caption).group(1)
    tab("Class activation maps")  # role queries see only the shown tab
    base_class = int(combobox(page, "Class (type to search)").input_value().split(":")[0])
    cold_layers = layer_order([f"layer{i}" for i in (1, 2, 3, 4)]
                              + [f"layer{i}.{j}" for i in (1, 2, 3, 4) for j in (0, 1)],
                              default_layer)
    cold_classes = [c for c in range(100, 1000, 37) if c != base_class]
    for r in range(rounds):
        page.evaluate("document.activeElement && document.activeElement.blur()")
        times["noop"].append(timed_interaction(page, "rerun (key r)",
                                               lambda: page.keyboard.press("r"), timeout_ms))
        tab("Activations")
        thumb = page.locator('[data-testid="stSlider"]').filter(
            has=page.get_by_text("Channel", exact=True)).get_by_role("slider")
        before = thumb.input_value()
        times["channel"].append(timed_interaction(
            page, f"Channel {before} + 1", lambda t=thumb: t.press("ArrowRight"), timeout_ms))
        if thumb.input_value() == before:
            raise RuntimeError("the Channel slider did not move")
        tab("Class activation maps")
        new_class = cold_classes[r % len(cold_classes)]
        for row, target in (("class cold", new_class), ("class warm", base_class)):
            times[row].append(choose(page, "Class (type to search)", f"{target}: ",
                                     re.compile(f"^{target}: "), timeout_ms))
        tab("Layers")
        layer = cold_layers[r % len(cold_layers)]
        for row, target in (("layer cold", layer), ("layer warm", default_layer)):
            times[row].append(choose(page, "Layer (every tab uses it)", target,
                                     re.compile(f"^{re.escape(target)}$"), timeout_ms))
        print(f"  browser: round {r + 1}/{rounds} (new layer {layer}, new class {new_class}): "
              + ", ".join(f"{k} {v[-1][1]:.2f}/{v[-1][2]:.2f}" for k, v in times.items()),
              flush=True)


# ---------------------------------------------------------------- report

def summary(values: list[float]) -> str:
    """``median / max``, or "-" for none."""
    if not values:
        return f"{'-':>13}"
    return f"{statistics.median(values):6.2f} /{max(values):5.2f}"


def verdict(values: list[float], goal: float | None) -> str:
    if not values or goal is None:
        return ""
    median = statistics.median(values)
    return f"{median / goal:5.1f}x {'met' if median <= goal else 'NOT met'}"


def report(results: dict[str, Times], browser: dict[str, list[tuple]] | None) -> None:
    names = list(results)
    if names:
        print("\nAppTest (seconds, median / max; every interaction reruns the whole script; "
              "ratio = median / goal)")
        print(f"  {'interaction':<30} {'goal':>5}  " + "  ".join(f"{n:>13}" for n in names)
              + "  " + "".join(f"  {n + ' vs goal':<16}" for n in names))
        for key, label, goal_key in ROWS:
            goal = GOALS.get(goal_key)
            cells = "  ".join(summary(results[n].get(key, [])) for n in names)
            verdicts = "".join(f"  {verdict(results[n].get(key, []), goal):<16}" for n in names)
            print(f"  {label:<30} {f'{goal:.1f}' if goal else '':>5}  {cells}  {verdicts}")
    if "current" in results:
        print("  current: the Channel slider lives in an st.fragment, but AppTest reruns the "
              "whole script,\n  so its figure is an upper bound for the fragment (see the "
              "browser part).")
    if "before" in results:
        print("  before: no one-channel view then, so the channel row shifts the 'Channels' "
              "range slider\n  by one; its classes are the top 5 only; its layer selectbox "
              "drives the Activations tab only.")
    if browser:
        print("\nBrowser, current app (headless Chromium, real server; seconds, median / max; "
              "rerun request sent |\n  server's end-of-script message at the page | page "
              "done: script state notRunning and every image loaded;\n  ratio = page done / "
              "goal)")
        for key, label, goal_key in ROWS:
            if not browser.get(key):
                continue
            goal = GOALS.get(goal_key)
            asked, ran, shown = ([t[i] for t in browser[key] if t[i] == t[i]]  # no NaN
                                 for i in range(3))
            print(f"  {label:<30} {f'{goal:.1f}' if goal else '':>5}  {summary(asked)} | "
                  f"{summary(ran)} | {summary(shown)}  {verdict(shown, goal)}")
        if browser.get("noop"):
            print("  'rerun, nothing changed' is Streamlit's R shortcut (a full rerun).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", default="apptest,browser",
                        help="comma-separated: apptest, browser (default: both)")
    parser.add_argument("--versions", default="before,current",
                        help="AppTest app versions, comma-separated (default: before,current)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds allowed for one rerun")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    if str(ROOT) not in sys.path:  # the current app imports the dashboard package
        sys.path.insert(0, str(ROOT))
    print(f"dashboard latency: {MODEL}, weights {WEIGHTS}, CPU, {torch.get_num_threads()} "
          f"threads, {args.rounds} rounds")
    load_start = tuple(round(x, 1) for x in os.getloadavg())
    results: dict[str, Times] = {}
    browser = None
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as folder:
        apps = {"before": lambda: before_app(Path(folder)),
                "current": lambda: AppVersion("current", APP, "channel", False, "cam_class",
                                              "layer")}
        if "apptest" in parts:
            for version in versions:
                app = apps[version]()
                if app is None:
                    continue
                try:
                    results[version] = bench_apptest(app, args.rounds, args.timeout)
                except Exception as exc:  # reported; the other parts still run
                    print(f"  {app.name}: failed: {type(exc).__name__}: {exc}")
        if "browser" in parts:
            browser = bench_browser(args.rounds, args.threads, args.timeout)
    report(results, browser)
    print(f"\nload average (1, 5, 15 min) at the start {load_start}, at the end "
          f"{tuple(round(x, 1) for x in os.getloadavg())} on {os.cpu_count()} CPUs: other work "
          "on the machine inflates every figure alike")


if __name__ == "__main__":
    main()

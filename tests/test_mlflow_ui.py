"""The MLflow UI in headless Chromium: a study logged to a real server, reviewed in a browser.

A small study is logged to ``mlflow server`` on loopback; Debian's ``chromium`` (driven by
Playwright, no downloaded browser) opens the experiment page, the study's parent run and a
compare view of its trial runs, and the tests check that the runs, α fitted and predicted,
the prediction-quality numbers and the observed and predicted drift are shown, with the
values MLflow holds. Screenshots go to ``tmp_path``; with ``LRADVISOR_UPDATE_DOCS=1`` also to
``docs/`` (the README's pictures)::

    LRADVISOR_UPDATE_DOCS=1 OMP_NUM_THREADS=1 python -m pytest -q tests/test_mlflow_ui.py

The study's learning rates stay below the stability bound, where the spectral prediction
applies, so the pictures show what a reviewer should see for a healthy study.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from _mlflow_server import MlflowServer, study_file
from lradvisor.studies import run_study

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# Root in a container, no GPU, and a closed network: without the last four chromium keeps
# trying to reach Google's update and sync services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1500, "height": 1000}
WAIT_MS = 60_000  # two slow shared cores: the first page load compiles a large bundle
DOCS = Path(__file__).resolve().parents[1] / "docs"
UPDATE_DOCS = os.environ.get("LRADVISOR_UPDATE_DOCS") == "1"

NAME = "mlp-ce-demo"
PARENT_METRICS = (
    "alpha_fitted",
    "alpha_ci_low",
    "alpha_ci_high",
    "alpha_predicted",
    "drift_correlation",
    "drift_median_relative_error",
)
# The MLflow 3 UI opens in GenAI mode with an assistant panel over the page: open the
# classic (model training) view with the panel closed.
BASE_STORAGE = {
    "mlflow.workflowType_v1": json.dumps("machine_learning"),
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
}


def _missing_browser() -> str | None:
    """What is missing for the check (and how to install it), or None."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is missing: apt-get install -y chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the Python package playwright is missing: pip install -e '.[dev]'")
    if not missing:
        return None
    return (
        "the MLflow UI check needs a browser: "
        + "; ".join(missing)
        + " (scripts/test installs both; no `playwright install` is needed)"
    )


def _require(browser) -> None:
    """Fail the test (a missing browser is not a reason to skip it)."""
    if isinstance(browser, str):
        pytest.fail(browser, pytrace=False)


@dataclass(frozen=True)
class Logged:
    """The logged study as MLflow holds it."""

    uri: str
    experiment_id: str
    parent_id: str
    parent_metrics: dict[str, float]
    trials: dict[str, int]  # run id → trial number
    latest: dict[str, dict[str, float]]  # run id → latest metric values


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian chromium, or the message saying what is missing (each test fails)."""
    missing = _missing_browser()
    if missing:
        yield missing
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def logged(tmp_path_factory, browser) -> Iterator[Logged | None]:
    if isinstance(browser, str):  # no browser: the tests fail before they look
        yield None
        return
    folder = tmp_path_factory.mktemp("mlflow-ui")
    server = MlflowServer(folder).start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("LRADVISOR_MLFLOW_SPOOL", str(folder / "spool"))
            run_study(
                study_file(
                    folder,
                    name=NAME,
                    search_space={"lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True}},
                    budget={"n_trials": 8, "steps": 60, "report_every": 5, "seed": 0},
                ),
                storage=f"sqlite:///{folder / 'studies.db'}",
                progress=False,
                tracking_uri=server.uri,
            )
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name(NAME)
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        (parent,) = [r for r in runs if r.data.tags.get("lradvisor.role") == "study"]
        children = [r for r in runs if r.data.tags.get("lradvisor.role") == "trial"]
        yield Logged(
            uri=server.uri,
            experiment_id=experiment.experiment_id,
            parent_id=parent.info.run_id,
            parent_metrics=dict(parent.data.metrics),
            trials={r.info.run_id: int(r.data.tags["optuna.trial_number"]) for r in children},
            latest={r.info.run_id: dict(r.data.metrics) for r in children},
        )
    finally:
        torch.set_num_threads(threads)
        server.kill()


@pytest.fixture
def open_page(browser, logged: Logged):
    """``open_page(fragment, storage)``: a fresh browser context on ``{uri}/#/{fragment}``."""
    contexts = []

    def open_(fragment: str, storage: dict[str, str] | None = None):
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(WAIT_MS)
        items = {**BASE_STORAGE, **(storage or {})}
        context.add_init_script(
            "".join(
                f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in items.items()
            )
        )
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{logged.uri}/#/{fragment}")
        return page

    yield open_
    for context in contexts:
        context.close()


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.wait_for_timeout(1500)  # let charts and transitions settle
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000, f"{name} looks blank"
    if UPDATE_DOCS:
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)
    return path


def _number(text: str) -> float:
    found = re.findall(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", text, flags=re.IGNORECASE)
    assert found, f"no number in {text!r}"
    return float(found[-1])


def test_experiment_page_lists_the_study_run_with_its_trial_runs(
    browser, logged: Logged, open_page, tmp_path: Path
) -> None:
    _require(browser)
    state = {
        # The trials' drift next to their learning rate, the parent run expanded.
        "selectedColumns": [
            "metrics.`drift_observed`",
            "metrics.`drift_predicted`",
            "params.`lr`",
            "tags.`lradvisor.regime`",
            "tags.`optuna.state`",
        ],
        "runsExpanded": {logged.parent_id: True},
    }
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{logged.experiment_id}"]-ReactComponentState'
    page = open_page(f"experiments/{logged.experiment_id}/runs", {key: json.dumps(state)})
    parent = page.get_by_text(f"study {NAME}", exact=True)
    parent.wait_for()
    first = page.get_by_text(f"trial {min(logged.trials.values())}", exact=True)
    try:
        first.wait_for(timeout=10_000)
    except Exception:  # another MLflow version ignored the stored state: expand by hand
        page.get_by_role("gridcell").filter(has=parent).get_by_role("button").first.click()
    for number in sorted(logged.trials.values()):
        row = page.get_by_text(f"trial {number}", exact=True)
        row.wait_for()
        assert row.is_visible(), f"trial {number} is not listed under the study's run"
    assert parent.is_visible()
    for key in ("drift_observed", "drift_predicted"):  # the columns chosen above
        assert page.get_by_role("columnheader").filter(has_text=key).count() >= 1, key
    _screenshot(page, tmp_path, "mlflow_experiment.png")


def test_parent_run_shows_alpha_and_the_quality_of_the_drift_prediction(
    browser, logged: Logged, open_page, tmp_path: Path
) -> None:
    _require(browser)
    page = open_page(f"experiments/{logged.experiment_id}/runs/{logged.parent_id}")
    page.get_by_text(f"study {NAME}", exact=True).first.wait_for()
    page.get_by_text("alpha_fitted", exact=True).first.wait_for()
    for key in PARENT_METRICS:
        assert key in logged.parent_metrics, f"the study logged no {key}"
        row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))
        assert row.count() == 1, f"{key}: {row.count()} rows in the metrics table"
        shown = _number(row.inner_text())
        assert shown == pytest.approx(logged.parent_metrics[key], rel=1e-9), key
    for number in logged.trials.values():  # the child runs are linked from the parent
        link = page.get_by_role("link", name=f"trial {number}", exact=True)
        link.first.wait_for()  # the child-run list renders after the metrics on a busy machine
        assert link.count() == 1
    # The metrics table is a 500 px scroll box and the drift numbers come last: let the
    # table and the boxes around it (up to the page's scroller) grow, so that the picture
    # shows every metric. Styles only; what the table holds is MLflow's.
    page.get_by_role("row").filter(has=page.get_by_text(PARENT_METRICS[-1], exact=True)).evaluate(
        """row => {
            for (let box = row.parentElement; box && box !== document.body; box = box.parentElement) {
                const style = getComputedStyle(box);
                const scroller = /auto|scroll/.test(style.overflowY);
                if (scroller && box.clientHeight >= 0.6 * window.innerHeight) return;
                if (scroller || style.maxHeight !== 'none' || style.overflowY !== 'visible') {
                    box.style.height = 'auto';
                    box.style.maxHeight = 'none';
                    box.style.overflowY = 'visible';
                }
            }
        }"""
    )
    page.get_by_text("drift_correlation", exact=True).first.scroll_into_view_if_needed()
    _screenshot(page, tmp_path, "mlflow_parent_run.png")


def test_compare_view_of_trial_runs_plots_predicted_against_observed_drift(
    browser, logged: Logged, open_page, tmp_path: Path
) -> None:
    _require(browser)
    ids = sorted(logged.trials, key=logged.trials.get)
    query = urllib.parse.urlencode(
        {"runs": json.dumps(ids), "experiments": json.dumps([logged.experiment_id])},
        quote_via=urllib.parse.quote,
    )
    page = open_page(f"compare-runs?{query}")
    page.get_by_text(f"Comparing {len(ids)} Runs", exact=False).first.wait_for()
    for key in ("drift_observed", "drift_predicted"):
        page.get_by_text(key, exact=True).first.wait_for()
    page.get_by_text("Scatter Plot", exact=True).click()
    page.locator("#x-axis-selector").click()
    page.get_by_role("option", name="drift_observed", exact=True).click()
    page.locator("#y-axis-selector").click()
    page.get_by_role("option", name="drift_predicted", exact=True).click()
    page.locator(".js-plotly-plot .xtitle", has_text="drift_observed").wait_for(state="attached")
    page.locator(".js-plotly-plot .ytitle", has_text="drift_predicted").wait_for(state="attached")
    # What the chart draws (Plotly's own data on the figure): one point per trial run at
    # (latest drift_observed, latest drift_predicted), labelled with the run's name.
    traces = page.evaluate(
        """() => [...document.querySelectorAll('.js-plotly-plot')]
            .filter(figure => figure.offsetParent !== null)
            .flatMap(figure => (figure.data || []).map(t => ({x: t.x, y: t.y, text: t.text})))"""
    )
    points = {}
    for trace in traces:
        for x, y, text in zip(trace["x"] or [], trace["y"] or [], trace["text"] or [], strict=True):
            name = re.search(r"trial \d+", text or "")
            if name:
                points[name.group(0)] = (x, y)
    expected = {
        f"trial {logged.trials[run]}": (metrics["drift_observed"], metrics["drift_predicted"])
        for run, metrics in logged.latest.items()
        if math.isfinite(metrics.get("drift_observed", math.nan))
        and math.isfinite(metrics.get("drift_predicted", math.nan))
    }
    assert len(expected) >= 6, "the study has trials with observed and predicted drift"
    assert set(points) == set(expected), (sorted(points), sorted(expected))
    for name, (observed, predicted) in expected.items():
        assert points[name] == pytest.approx((observed, predicted), rel=1e-9), name
    page.evaluate("document.activeElement && document.activeElement.blur()")
    _screenshot(page, tmp_path, "mlflow_compare_runs.png")

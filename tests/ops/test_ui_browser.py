"""As a user would: ``dagster dev`` on 127.0.0.1, ``train_and_publish`` launched through GraphQL for a tiny
catalogue, the automation sensor evaluating the assets' conditions, then headless Chromium screenshots of the
materialised asset graph, the evaluation's page and an asset's automation tab.
Slow (a real run with step subprocesses): marked ``browser``, run by ``make ops-test`` / ``.ci/run``."""

from __future__ import annotations

import io
import os
import time

import pytest

from pipelines.execution import INSTANCE_YAML
from tests.conftest import needs_fashion_mnist
from tests.ops_support import REPO, TINY_OPS, Chromium, GraphQL, dagster_dev

pytestmark = [pytest.mark.browser, needs_fashion_mnist, pytest.mark.timeout(1800)]

ARTIFACTS = os.path.join(REPO, "tests", "artifacts")
CATALOGUE = "fashion-mnist"
ASSETS = (
    "catalogue",
    "hashing_model",
    "packed_codes",
    "model_evaluation",
    "binary_index",
    "retrieval_diagnostics",
)
ADD_PARTITION = """
mutation($key: String!) {
  addDynamicPartition(repositorySelector: {repositoryLocationName: "vitrieve", repositoryName: "__repository__"},
                      partitionsDefName: "catalogues", partitionKey: $key) {
    __typename ... on PythonError { message }
  }
}"""
MATERIALISATIONS = """
query($path: [String!]!, $key: String!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(partitions: [$key], limit: 1) { runId metadataEntries { label } } }
  }
}"""
RUN = """
query($runId: ID!) {
  runOrError(runId: $runId) {
    ... on Run { status tags { key value }
      eventConnection(limit: 5000) { events { __typename ... on ExecutionStepFailureEvent { stepKey error { message } } } } }
  }
}"""
AUTOMATION_SENSOR = """
query {
  sensorOrError(sensorSelector: {repositoryLocationName: "vitrieve", repositoryName: "__repository__",
                                 sensorName: "automation_sensor"}) {
    __typename ... on Sensor { sensorState { status } }
  }
}"""
EVALUATIONS = """
query($path: [String!]!) {
  assetConditionEvaluationRecordsOrError(assetKey: {path: $path}, limit: 20) {
    __typename ... on AssetConditionEvaluationRecords {
      records { evaluationId numRequested evaluationNodes { userLabel expandedLabel } }
    }
  }
}"""
FOLLOW_LABEL = "eager, once upstream blocking checks passed"


def wait_for_evaluation(gql: GraphQL, asset: str, timeout: float = 240) -> dict:
    """The latest evaluation of ``asset``'s automation condition by ``automation_sensor`` after the run."""
    deadline = time.monotonic() + timeout
    while True:
        found = gql(EVALUATIONS, path=[asset])["assetConditionEvaluationRecordsOrError"]
        records = found.get("records") or []
        if records:
            return records[0]
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no automation evaluation of {asset} after {timeout}s ({found['__typename']})"
            )
        time.sleep(5)


def launch_and_wait(port: int, run_config: dict, timeout: float = 1500) -> dict:
    """Submit ``train_and_publish`` for the catalogue through the GraphQL client; the finished run."""
    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    run_id = client.submit_job_execution(
        "train_and_publish", run_config=run_config, tags={"dagster/partition": CATALOGUE}
    )
    gql, deadline = GraphQL(port), time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = gql(RUN, runId=run_id)["runOrError"]
        if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return {"run_id": run_id, **run}
        time.sleep(3)
    raise TimeoutError(f"run {run_id} still {run['status']} after {timeout}s")


def assert_screenshot(path: str, min_bytes: int = 20_000) -> None:
    from PIL import Image

    assert os.path.getsize(path) > min_bytes, f"{path} is nearly empty"
    with open(path, "rb") as f, Image.open(io.BytesIO(f.read())) as img:
        assert img.size == (1600, 1000)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 50, f"{path} looks blank"


def test_train_and_publish_from_the_ui(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    env = {"VITRIEVE_ROOT": str(tmp_path / "data"), "VITRIEVE_DEVICE": "cpu"}
    os.makedirs(ARTIFACTS, exist_ok=True)
    with dagster_dev(str(home), env, str(tmp_path / "dagster-dev.log")) as port:
        gql = GraphQL(port)
        added = gql(ADD_PARTITION, key=CATALOGUE)["addDynamicPartition"]
        assert added["__typename"] == "AddDynamicPartitionSuccess", added
        run = launch_and_wait(port, {"ops": TINY_OPS})
        failures = [
            e for e in run["eventConnection"]["events"] if e["__typename"] == "ExecutionStepFailureEvent"
        ]
        assert run["status"] == "SUCCESS", failures
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["vitrieve/catalogue"] == CATALOGUE and tags["vitrieve/model"].startswith(
            "vts-cls-csq-16b"
        )

        for asset in ASSETS:  # GraphQL reports every asset materialised by this run
            found = gql(MATERIALISATIONS, path=[asset], key=CATALOGUE)["assetOrError"][
                "assetMaterializations"
            ]
            assert found and found[0]["runId"] == run["run_id"], asset
        labels = {
            e["label"]
            for e in gql(MATERIALISATIONS, path=["model_evaluation"], key=CATALOGUE)["assetOrError"][
                "assetMaterializations"
            ][0]["metadataEntries"]
        }
        assert {"pr_curve", "bit_balance", "retrieval_examples", "attention_rollout", "metrics"} <= labels

        sensor = gql(AUTOMATION_SENSOR)["sensorOrError"]
        assert sensor["sensorState"]["status"] == "RUNNING", sensor  # running by default under dagster dev
        for asset in ("packed_codes", "binary_index"):
            latest = wait_for_evaluation(gql, asset)
            labels = {node["userLabel"] for node in latest["evaluationNodes"]}
            assert FOLLOW_LABEL in labels, (asset, labels)
            assert latest["numRequested"] == 0, latest  # the run materialised them already: nothing to follow

        gql("mutation { setNuxSeen }")  # the first-visit newsletter dialog, as a user would dismiss it
        screenshots(f"http://127.0.0.1:{port}", str(tmp_path))


SHOW_MARKDOWN = """(() => {
  const row = [...document.querySelectorAll('tr')].find(r => r.cells.length && r.cells[0].innerText.trim() === '%s');
  [...row.querySelectorAll('*')].find(e => !e.childElementCount && e.innerText.trim() === '[Show Markdown]').click();
  return true;
})()"""
OPEN_LATEST_EVALUATION = """(() => {
  const cell = document.querySelector('tbody tr').cells[0];
  (cell.querySelector('a, button, [role=button]') || [...cell.querySelectorAll('*')].find(e => !e.childElementCount)
   || cell).click();
  return true;
})()"""
IMAGE_SHOWN = (
    "[...document.querySelectorAll('[role=dialog] img')]"
    ".some(i => i.src.startsWith('data:image/png') && i.complete && i.naturalWidth > 0)"
)


def screenshots(base: str, tmp: str) -> None:
    """The materialised asset graph, the evaluation's metadata, two of its figures and one evaluation of
    ``packed_codes``' automation condition (its *Automation* tab), under tests/artifacts."""
    shot = lambda name: (time.sleep(1), browser.screenshot(os.path.join(ARTIFACTS, name)))  # noqa: E731
    with Chromium(os.path.join(tmp, "chromium-profile"), os.path.join(tmp, "chromium.log")) as browser:
        browser.goto(
            f"{base}/locations/vitrieve/asset-groups/vitrieve/lineage",
            "document.body.innerText.split('100% filled').length > 6",
        )
        shot("asset_graph.png")
        page = f"{base}/assets/model_evaluation?partition={CATALOGUE}"
        for figure in ("", "retrieval_examples", "attention_rollout"):
            browser.goto(page, "document.body.innerText.includes('[Show Markdown]')")
            if figure:
                browser.js(SHOW_MARKDOWN % figure)
                browser.wait(IMAGE_SHOWN)
            shot(f"{figure or 'model_evaluation'}.png")
        browser.goto(  # the evaluations of the automation condition, latest first
            f"{base}/assets/packed_codes?view=automation",
            "document.body.innerText.includes('Evaluation result') && !!document.querySelector('tbody tr')",
        )
        try:  # the latest one opened: its condition, sub-condition by sub-condition
            browser.js(OPEN_LATEST_EVALUATION)
            browser.wait(f"document.body.innerText.includes('{FOLLOW_LABEL}')")
        finally:  # what the page showed, also when the label never appeared
            shot("automation_conditions.png")
            with open(os.path.join(ARTIFACTS, "automation_conditions.txt"), "w") as f:
                f.write(browser.js("document.body.innerText"))
    for name in (
        "asset_graph",
        "model_evaluation",
        "retrieval_examples",
        "attention_rollout",
        "automation_conditions",
    ):
        assert_screenshot(os.path.join(ARTIFACTS, f"{name}.png"))

"""`distill serve` against a real local Prefect server: scheduled runs and a run with other
parameters complete, each in a run directory of its own, with the report as an artifact.

The teacher is llm-katan's echo server (a real OpenAI-compatible server): the test is about
scheduling and run directories, so it wants the fastest real teacher, not a good one.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from core.net import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _api(base: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait_for(condition, timeout_s: float, what: str, processes=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            assert process.poll() is None, f"{process.args[:3]} exited with {process.returncode}"
        value = condition()
        if value:
            return value
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_scheduled_deployment_on_a_real_server(katan, tmp_path):
    teacher = katan()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
           "PREFECT_RUNNER_POLL_FREQUENCY": "3", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT)
    processes = [server]
    try:
        _wait_for(lambda: _healthy(api), 180, "the Prefect server", [server])
        client_env = {**env, "PREFECT_API_URL": api, "DISTILL_REPO": str(REPO)}
        # prefect.yaml deploys every shipped config to a work pool.
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", "distill-pool", "--type", "process"],
                       env=client_env, check=True, capture_output=True, timeout=120)
        deployed = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=REPO,
                                  env=client_env, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        names = {d["name"] for d in _api(api, "/deployments/filter", {})}
        assert names >= {"demo-nightly", "alpaca-data-refresh", "alpaca", "evol-instruct", "domain-cooking"}
        refresh = _deployment(api, "distill-pipeline/alpaca-data-refresh")
        assert refresh["parameters"]["stages"] == ["generate", "filter"]
        assert refresh["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] in (
            str(REPO), "{{ $DISTILL_REPO }}")

        config = tmp_path / "echo.yaml"
        config.write_text(
            f"name: echo-nightly\nseed_tasks: {REPO / 'data' / 'seed_tasks.jsonl'}\n"
            f"teacher:\n  backend: openai\n  model: echo\n  base_urls: ['{teacher}']\n"
            "generate:\n  max_requests: 2\n  requests_per_shard: 1\n  max_tokens: 64\n"
        )
        runs_root = tmp_path / "runs"
        serve = subprocess.Popen(
            [str(BIN / "distill"), "serve", str(config), "--interval", "20", "--name", "nightly",
             "--stages", "generate", "--runs-root", str(runs_root)],
            cwd=REPO, env=client_env, stdout=open(tmp_path / "serve.log", "w"), stderr=subprocess.STDOUT)
        processes.append(serve)
        deployment = _wait_for(lambda: _deployment(api, "distill-pipeline/nightly"), 120, "the deployment", processes)
        assert deployment["parameters"]["stages"] == ["generate"]

        # A run with other parameters, as from the UI: a different size, no file edited.
        subprocess.run([str(BIN / "prefect"), "deployment", "run", "distill-pipeline/nightly", "--params",
                        json.dumps({"overrides": ["generate.max_requests=1"]})],
                       env=client_env, check=True, capture_output=True, timeout=120)

        def finished_runs():
            runs = _api(api, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})
            assert not [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")], \
                (tmp_path / "serve.log").read_text()[-3000:]
            done = [r for r in runs if r["state_type"] == "COMPLETED"]
            manual = [r for r in done if not r["auto_scheduled"]]
            scheduled = [r for r in done if r["auto_scheduled"]]
            return (manual, scheduled) if manual and scheduled else None

        manual, scheduled = _wait_for(finished_runs, 240, "a scheduled and a manual run", processes)
        # The report is in the UI as an artifact of the runs.
        artifacts = _api(api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["distill-report"]}}})
        assert {a["flow_run_id"] for a in artifacts} >= {r["id"] for r in manual + scheduled}
    finally:
        for process in reversed(processes):
            _stop(process)

    run_dirs = {runs_root / "echo-nightly" / f"{r['name']}-{r['id'][:8]}": r for r in manual + scheduled}
    assert len(run_dirs) == len(manual) + len(scheduled)  # every run in its own directory
    for run_dir, run in run_dirs.items():
        journal = (run_dir / "work" / "generate_requests.jsonl").read_text().splitlines()
        assert len(journal) == (1 if run in manual else 2), run_dir
        assert (run_dir / "stages" / "generate.json").is_file()
        assert not (run_dir / "stages" / "filter.json").exists()
        assert (run_dir / "report.md").is_file()


def _healthy(api: str) -> bool:
    try:
        return _api(api, "/health") is True
    except OSError:
        return False


def _deployment(api: str, name: str) -> dict | None:
    try:
        return _api(api, f"/deployments/name/{name}")
    except OSError:
        return None

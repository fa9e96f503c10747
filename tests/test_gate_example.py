"""examples/ci/compress-gate.yml, run as a user's CI runs it: its env, then every `run:` step in order in a
fresh working directory (the install step aside: these tests run inside the installed environment). MODEL
is a tiny model so that it takes seconds; the baseline is written first with the documented command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "ci" / "compress-gate.yml"
NOT_RUN = {"Install compress"}


def workflow_steps() -> tuple[dict[str, str], list[tuple[str, str]]]:
    wf = yaml.safe_load(WORKFLOW.read_text())
    job = next(iter(wf["jobs"].values()))
    steps = [(s.get("name", ""), s["run"]) for s in job["steps"] if "run" in s and s.get("name") not in NOT_RUN]
    return {k: str(v) for k, v in wf.get("env", {}).items()}, steps


def run_step(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-eo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800)


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory):
    from compress.tiny import save_tiny

    repo = tmp_path_factory.mktemp("user-repo")
    model = save_tiny(repo / "model", "llama", seed=0, num_attention_heads=6, num_key_value_heads=2)
    wf_env, steps = workflow_steps()
    env = {**os.environ, **wf_env, "MODEL": str(model), "COMPRESS_CACHE": str(repo / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return repo, env, steps


def test_workflow_steps_pass_against_their_own_baseline(user_repo):
    repo, env, steps = user_repo
    names = [n for n, _ in steps]
    assert names[:3] == ["Build the artifacts you ship", "Bench (accuracy on every runtime, same tokens)",
                         "Gate against the committed baseline"]
    build, bench, gate = (s for _, s in steps)
    for script in (build, bench):
        r = run_step(script, repo, env)
        assert r.returncode == 0, r.stderr[-3000:]
    # the first time, as the workflow's header says: bench again, baseline with the two runs' spread
    shutil.move(repo / "runs" / "bench", repo / "runs" / "bench2")
    assert run_step(bench, repo, env).returncode == 0
    (repo / "ci").mkdir()
    first = run_step('compress check runs/bench --baseline "$BASELINE" --update-baseline --spread-run runs/bench2',
                     repo, env)
    assert first.returncode == 0, first.stderr[-3000:]
    r = run_step(gate, repo, env)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert (repo / "runs" / "bench" / "report" / "report.html").is_file()  # what the upload step keeps

"""schemathesis against `/openapi.json` of a real daemon (sim engine): for every operation the document
describes, generated inputs (valid and not) never get a 5xx. Run with the CLI in a subprocess, the way an
operator would, with a bounded number of examples per operation so it finishes in a couple of minutes. The
stateful phase follows the document's links (a created response, then retrieved and deleted by its id)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
import pytest

from daemon_harness import CynodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HERE = Path(__file__).resolve().parent
# Per operation; ~30 s on two busy cores. A deeper run: CYNODE_SCHEMATHESIS_EXAMPLES=1000 (and another seed).
EXAMPLES = int(os.environ.get("CYNODE_SCHEMATHESIS_EXAMPLES", "100"))
SEED = os.environ.get("CYNODE_SCHEMATHESIS_SEED", "1")


@pytest.fixture(scope="module")
def sim_node(tmp_path_factory, redis_server, models_dir):
    proc = CynodeProcess(tmp_path_factory.mktemp("schemathesis"), redis_url=redis_server.url, models_dir=models_dir,
                         extra={"worker": {"backend": "sim", "sim": {"tokens_per_second": 2000.0, "answer_tokens": 8}},
                                # The per-client guard would answer most of the run with 429s, untested.
                                "gateway": {"requests_per_second_per_client": 0}}
                         ).start(timeout=120)
    yield proc
    proc.kill()


def test_no_generated_input_gets_a_server_error(sim_node, tmp_path):
    # An admin key: every operation is reached past authentication, where the handlers' own checks run.
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{sim_node.base_url}/openapi.json",
               "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES), "--seed", SEED,
               "--phases", "examples,coverage,fuzzing,stateful", "--workers", "2", "--request-timeout", "60",
               "--continue-on-failure", "--no-color",
               "-H", f"Authorization: Bearer {sim_node.api_key()}", "-H", "Cache-Control: no-store",
               "--report", "junit", "--report-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=tmp_path,  # its cache goes there
                          env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
                               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])})
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis found failures:\n{output[-12000:]}\n--- node log ---\n{sim_node.log()}"
    summary = [line for line in output.splitlines() if " generated, " in line]
    assert summary and "passed" in summary[0], output[-4000:]  # it ran cases, and they passed
    # The stateful phase followed the document's links: created responses were retrieved and deleted.
    assert "Stateful (in" in output and "API Links:" in output, output[-4000:]

"""Shared test helpers. Everything runs offline on CPU."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO_ROOT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DISTRIBUTED_SCRIPTS = Path(__file__).parent / "distributed"

GROUPS = {
    "a": "the small cat sat on the warm mat and looked at the garden number {}",
    "b": "a big dog ran across the green park to find a stick number {}",
}


def load_strict_json(path: Path):
    """``json.loads`` that refuses NaN and Infinity (Python's json writes and reads them; no JSON standard does)."""

    def refuse(constant: str):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture(autouse=True)
def reports_are_strict_json(request):
    """Every report.json a test writes under its ``tmp_path`` is strict JSON."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        for path in folder.rglob("report.json"):
            if path.stat().st_size > 2:  # tests write "{}" as an earlier run's placeholder
                load_strict_json(path)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """Folder with a tiny random LlamaForCausalLM and a byte-level BPE tokenizer trained on the tiny corpus."""
    from tests.trainer_utils import tiny_bpe_llama

    folder = tmp_path_factory.mktemp("tiny_llama")
    model, tokenizer = tiny_bpe_llama([template.format(i) for template in GROUPS.values() for i in range(20)], 300)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    """A local json-lines dataset: 24 rows of group ``a`` and 12 of group ``b`` (columns text, gender, id)."""
    path = tmp_path_factory.mktemp("data") / "bios.jsonl"
    rows = [{"text": GROUPS["a"].format(i), "gender": "a", "id": i} for i in range(24)]
    rows += [{"text": GROUPS["b"].format(i), "gender": "b", "id": 100 + i} for i in range(12)]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


def free_port() -> int:
    """A TCP port free on this machine now: two launches at once (two test runs side by side) would otherwise both
    bind torchrun's default 29500, and the second fails with "address already in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_accelerate_launch(target: list[str], num_processes: int = 2, timeout: int = 300):
    """Run ``accelerate launch <target>`` on ``num_processes`` CPU processes (gloo) and return the completed process.

    ``--cpu`` would start a single process (accelerate's simple launcher); ``--multi_gpu`` on a machine without GPUs
    starts ``num_processes`` workers with torchrun, which accelerate runs as ``MULTI_CPU`` over gloo.
    """
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", str(num_processes), "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    # ACCELERATE_USE_CPU: without it, a script whose Accelerator() is not built with cpu=True (Trainer, the diffusion
    # script) starts as independent single processes, each rank 0 of 1, on a machine without GPUs.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    env["ACCELERATE_USE_CPU"] = "1"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([*launch, *map(str, target)], capture_output=True, text=True, timeout=timeout, env=env)


def accelerate_launch(script: str, *args: str, num_processes: int = 2, timeout: int = 300) -> None:
    """Run ``tests/distributed/<script>`` under ``accelerate launch`` on CPU processes; fail with its output."""
    result = run_accelerate_launch([DISTRIBUTED_SCRIPTS / script, *args], num_processes, timeout)
    if result.returncode != 0:
        pytest.fail(f"accelerate launch {script} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

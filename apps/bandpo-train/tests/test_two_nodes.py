"""A two-node launch on one machine: ``accelerate launch --num_machines 2 --machine_rank 0|1``
on localhost, one CPU process per "node" over gloo, running bandpo-train with checkpoints and a
resume on both nodes.

Checked across the nodes: the weights of both processes after every optimiser step (a checksum
each process writes), one writer of metrics and run files, where each checkpoint lands with a
shared output folder and with node-local ones (``checkpoint.save_on_each_node=true``), that a
resume continues exactly (the node-local run resumed matches the shared run never interrupted),
and that node-local folders without that setting stop both nodes with one clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST

from bandpo_train.run import _stop_together

WORKER = Path(__file__).with_name("two_node_worker.py")
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_VISIBLE_DEVICES": "",
}
# Every optimiser step moves the weights (entropy bonus: a gradient even where a group's rewards
# do not vary), and each process's own samples give it its own gradient, so equal weights on
# both nodes mean the gradients were synchronised.
RUN = [
    *FAST,
    "task.name=trap",
    "algorithm.entropy_coef=0.01",
    "plots=false",
    "checkpoint.save_every=1",
    "checkpoint.resume=latest",
]
LIMIT_S = 300  # per launch; a healthy one takes well under a minute on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_nodes(
    outputs: tuple[Path, Path], records: Path, args: list[str], logs: Path
) -> tuple[list[int], list[str]]:
    """Returns both launchers' exit statuses and outputs, node 0 first.

    Node ``r`` runs ``accelerate launch --num_machines 2 --machine_rank r`` with
    ``output_dir=outputs[r]``. Each launcher runs under ``timeout`` in its own session; once
    one has failed the other gets a grace period to report, then both are killed, so a node
    left waiting for its peer never hangs the test.
    """
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "the accelerate CLI is not installed next to this Python"
    port = str(_free_port())
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    files = []
    for rank, out in enumerate(outputs):
        command = [
            *("timeout", "-k", "10", str(LIMIT_S), accelerate, "launch"),
            *("--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank)),
            *("--main_process_ip", "127.0.0.1", "--main_process_port", port),
            *("--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no"),
            *(str(WORKER), str(records), f"output_dir={out}", *args),
        ]
        log = (logs / f"node{rank}.log").open("w")
        files.append(log)
        procs.append(
            subprocess.Popen(
                command, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    try:
        deadline = time.monotonic() + LIMIT_S + 20
        failed_at: float | None = None
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() > failed_at + 60:
                break
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for log in files:
            log.close()
    outputs_text = [(logs / f"node{rank}.log").read_text() for rank in (0, 1)]
    return [p.returncode for p in procs], outputs_text


def run_ok(outputs: tuple[Path, Path], records: Path, args: list[str], logs: Path) -> None:
    codes, texts = launch_two_nodes(outputs, records, args, logs)
    assert codes == [0, 0], "\n\n".join(f"node {r}:\n{t[-3000:]}" for r, t in enumerate(texts))


def checksums(records: Path) -> dict[int, list[dict]]:
    """Returns each process's checksum lines, by process index."""
    return {
        rank: [json.loads(x) for x in (records / f"rank-{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    }


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def steps_after_update(lines: list[dict]) -> dict[tuple[int, int], str]:
    """Returns {(rl_step, update): checksum} of the lines written after an optimiser step."""
    return {(r["rl_step"], r["update"]): r["checksum"] for r in lines if r["update"] > 0}


def starts(lines: list[dict]) -> list[tuple[int, str]]:
    """Returns (RL step, checksum) of each training start (fresh or resumed), in order."""
    return [(r["rl_step"], r["checksum"]) for r in lines if r["update"] == 0]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Returns the folder of a run with one output folder for both nodes: 3 RL steps (12
    optimiser steps) straight, then resumed on both nodes for a 4th."""
    base = tmp_path_factory.mktemp("shared")
    out = base / "out"
    run_ok((out, out), base / "records", [*RUN, "max_steps=12"], base / "logs-1")
    run_ok((out, out), base / "records", [*RUN, "max_steps=16"], base / "logs-2")
    return base


@pytest.fixture(scope="module")
def node_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Returns the folder of a run with one output folder per node: 2 RL steps, then resumed
    on both nodes (each from its own checkpoint) for a 3rd."""
    base = tmp_path_factory.mktemp("node_local")
    outs = (base / "node0", base / "node1")
    args = [*RUN, "checkpoint.save_on_each_node=true"]
    run_ok(outs, base / "records", [*args, "max_steps=8"], base / "logs-1")
    run_ok(outs, base / "records", [*args, "max_steps=12"], base / "logs-2")
    return base


@pytest.mark.slow
def test_shared_folder_equal_weights_after_every_step_and_resume(shared) -> None:
    lines = checksums(shared / "records")
    assert all(r["local_process"] == 0 for r in lines[0] + lines[1])  # one process per node
    after = [steps_after_update(lines[rank]) for rank in (0, 1)]
    assert list(after[0]) == [(s, u) for s in (1, 2, 3, 4) for u in (1, 2, 3, 4)]
    assert after[0] == after[1]  # both nodes hold the same weights after every step
    assert len(set(after[0].values())) == 16  # and every step moved them
    # Both nodes resumed at RL step 3 from the weights they had there.
    for rank in (0, 1):
        assert starts(lines[rank]) == [(0, starts(lines[0])[0][1]), (3, after[0][(3, 4)])]


@pytest.mark.slow
def test_shared_folder_has_one_writer(shared) -> None:
    out = shared / "out"
    # One metrics line per optimiser step: the main process alone wrote them, and the resumed
    # run continued the file.
    assert [r["step"] for r in metrics(out)] == list(range(1, 17))
    assert json.loads((out / "run.json").read_text())["num_processes"] == 2
    # The newest two checkpoints (keep_last), each with both nodes' RNG states.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000003",
        "step-000004",
    ]
    for step in ("step-000003", "step-000004"):
        files = {p.name for p in (out / "checkpoints" / step).iterdir()}
        assert {"model.safetensors", "optimizer.bin", "trainer_state.json"} <= files
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= files
    assert not list(out.glob(".rl-trainer-node-*"))


@pytest.mark.slow
def test_node_local_folders_resume_exactly_on_both_nodes(shared, node_local) -> None:
    lines = checksums(node_local / "records")
    after = [steps_after_update(lines[rank]) for rank in (0, 1)]
    assert after[0] == after[1]
    for rank in (0, 1):
        assert starts(lines[rank])[1] == (2, after[0][(2, 4)])
    # The same configuration as the shared run: resumed after RL step 2, it takes RL step 3
    # exactly as the uninterrupted shared run did (weights, optimiser, sampler and both
    # processes' RNG states restored, each node from its own folder).
    reference = steps_after_update(checksums(shared / "records")[0])
    assert after[0] == {k: v for k, v in reference.items() if k[0] <= 3}


@pytest.mark.slow
def test_node_local_folders_checkpoint_on_each_node(node_local) -> None:
    node0, node1 = node_local / "node0", node_local / "node1"
    for rank, out in enumerate((node0, node1)):
        steps = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert steps == ["step-000002", "step-000003"]  # keep_last pruned on each node
        for step in steps:
            files = {p.name for p in (out / "checkpoints" / step).iterdir()}
            assert {"model.safetensors", "optimizer.bin", "trainer_state.json"} <= files
            assert {f for f in files if f.startswith("random_states")} == {
                f"random_states_{rank}.pkl"
            }
    # The embedded model was built on node 0 and copied: both nodes trained from the same bytes.
    model = Path("embedded") / "model" / "model.safetensors"
    assert (node0 / model).read_bytes() == (node1 / model).read_bytes()
    # Metrics, run files and the final model are the main process's: on node 0 only.
    assert [r["step"] for r in metrics(node0)] == list(range(1, 13))
    for name in ("metrics.jsonl", "run.json", "eval.json", "config.yaml", "final"):
        assert (node0 / name).exists() and not (node1 / name).exists(), name


@pytest.mark.slow
def test_node_local_folders_without_the_setting_stop_both_nodes(tmp_path) -> None:
    outs = (tmp_path / "node0", tmp_path / "node1")
    codes, texts = launch_two_nodes(outs, tmp_path / "records", [*RUN, "max_steps=4"], tmp_path)
    assert codes[0] != 0 and codes[1] != 0
    for text in texts:
        assert "is not one folder shared by the 2 nodes" in text, text[-3000:]
        assert "checkpoint.save_on_each_node=true" in text
        assert "exitcode  : 2" in text  # bandpo-train's configuration-error status
    for out in outs:  # stopped before the warm start: nothing written, no marker left behind
        assert not [p for p in out.rglob("*")], out


class _Process:
    """The part of accelerate's PartialState that ``_stop_together`` reads: process 0 of 2."""

    num_processes = 2
    process_index = 0


@pytest.mark.parametrize(("missing_file", "kind"), [(True, FileNotFoundError), (False, ValueError)])
def test_a_check_failing_on_another_node_stops_this_one(monkeypatch, missing_file, kind) -> None:
    import accelerate.utils

    failure = (1, missing_file, "data.eval_path: /data/eval.jsonl does not exist")
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: [mine[0], failure])
    with pytest.raises(kind, match=r"^process 1: data.eval_path: /data/eval.jsonl does not"):
        _stop_together(None, _Process())
    # A process with its own error raises that one, unchanged.
    own = ValueError("algorithm.rule: unknown clipping rule 'bandd'")
    with pytest.raises(ValueError, match=r"^algorithm.rule: unknown") as raised:
        _stop_together(own, _Process())
    assert raised.value is own


def test_no_failure_anywhere_passes(monkeypatch) -> None:
    import accelerate.utils

    seen = []
    monkeypatch.setattr(
        accelerate.utils, "gather_object", lambda mine: seen.append(mine) or [mine[0], None]
    )
    _stop_together(None, _Process())
    assert seen == [[None]]  # it did ask the other processes

"""Multi-node checkpoints on one machine: two processes of one gloo group, each the only
process of its "node", with one output folder for both or one folder each
(``checkpoint.save_on_each_node``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rl_trainer.config import load_config

WORKER = Path(__file__).with_name("node_layout_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Returns both processes' results (rank order) of one run of the worker."""
    base = tmp_path_factory.mktemp("nodes")
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            # Each process is alone on its node: both are local rank 0.
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(base)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:  # one failed or hung: never leave the other waiting on it
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-4000:]
    return [json.loads((base / f"result-{rank}.json").read_text()) for rank in (0, 1)]


def test_each_process_is_the_local_main_process_of_its_node(results) -> None:
    assert [(r["rank"], r["local_rank"], r["world"]) for r in results] == [(0, 0, 2), (1, 0, 2)]


def test_a_shared_folder_needs_save_on_each_node_false(results) -> None:
    for r in results:
        assert r["layout/shared/save_on_each_node=False"] == {"value": True}
        refused = r["layout/shared/save_on_each_node=True"]
        assert refused["error"] == "CheckpointLayoutError"
        assert "each would write the same checkpoint" in refused["message"]
        assert "save_on_each_node=false" in refused["message"]


def test_node_local_folders_need_save_on_each_node_true(results) -> None:
    for r in results:
        refused = r["layout/own/save_on_each_node=False"]
        assert refused["error"] == "CheckpointLayoutError"
        assert "is not one folder shared by the 2 nodes" in refused["message"]
        assert "checkpoint.save_on_each_node=true" in refused["message"]
        assert r["layout/own/save_on_each_node=True"] == {"value": False}


def test_the_layout_check_leaves_no_files(results) -> None:
    for r in results:
        for key, left in r.items():
            if key.endswith("/left"):
                assert left == [], key


def test_checkpoint_files_per_layout(results) -> None:
    model = ["model.safetensors", "optimizer.bin"]
    for r in results:
        # Shared: one checkpoint, the main process's files plus both processes' RNG states.
        assert r["files/shared"] == sorted(
            [*model, "random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"]
        )
    for rank, r in enumerate(results):
        # Node-local: a full checkpoint on each node, with its own process's RNG state.
        assert r["files/own"] == sorted([*model, f"random_states_{rank}.pkl", "trainer_state.json"])


def test_every_node_resumes_from_its_copy(results) -> None:
    for rank, r in enumerate(results):
        assert r["resume/shared"]["value"].endswith("shared/checkpoints/step-000001")
        assert r["resume/own"]["value"].endswith(f"node{rank}/checkpoints/step-000001")
        assert r["loaded_step"] == 1 and r["loaded_weight_sum"] > 0


def test_a_checkpoint_missing_on_one_node_stops_every_process(results) -> None:
    for r in results:
        latest = r["resume/own/node1_lost"]
        assert latest["error"] == "CheckpointLayoutError"
        assert "would resume from different checkpoints" in latest["message"]
        assert "process 1: no checkpoint" in latest["message"]
    explicit = [r["resume/explicit/node1_lost"] for r in results]
    assert {e["error"] for e in explicit} == {"FileNotFoundError"}
    assert explicit[0]["message"].startswith("process 1: checkpoint.resume=")
    assert explicit[1]["message"].startswith("checkpoint.resume=")


def test_save_on_each_node_is_a_config_key(tmp_path) -> None:
    assert load_config(None, []).checkpoint.save_on_each_node is False
    assert load_config(None, ["checkpoint.save_on_each_node=true"]).checkpoint.save_on_each_node

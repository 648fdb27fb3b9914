"""Tests for the ``vllm`` rollout backend against a fake server (no vLLM needed): the HTTP
client's retries and errors, the request bodies and the mapping of answers, the weight sync,
the log-prob mismatch metric, ``rl-trainer vllm-serve`` and the CLI's errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import write_jsonl
from fake_vllm import FakeVllm, fake_choice
from safetensors import safe_open
from safetensors.torch import load_file

from rl_trainer import vllm_client
from rl_trainer.rollout import SamplingParams, create_rollout_backend
from rl_trainer.vllm_client import VllmClient, VllmRolloutBackend, VllmServerError

# ------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
def fake():
    with FakeVllm() as server:
        yield server


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Records the client's backoff and polling sleeps, and cuts each to 10 ms of real time."""
    recorded: list[float] = []

    def sleep(seconds: float) -> None:
        recorded.append(seconds)
        time.sleep(min(seconds, 0.01))

    clock = SimpleNamespace(sleep=sleep, monotonic=time.monotonic, perf_counter=time.perf_counter)
    monkeypatch.setattr(vllm_client, "time", clock)
    return recorded


def closed_port() -> int:
    """Returns a port that nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def tokenizer():
    from rl_trainer.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def tiny_model(tokenizer):
    from rl_trainer.tiny import build_tiny_model

    return build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=4)


def vllm_config(url: str, output_dir: Path, **overrides: object):
    from rl_trainer.config import load_config

    values: dict[str, object] = {
        "rollout.backend": "vllm",
        "rollout.vllm.url": url,
        "logging.output_dir": str(output_dir),
        **overrides,
    }
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])


def make_backend(fake, tmp_path, tokenizer, accelerator, model=None, **overrides):
    config = vllm_config(fake.url, tmp_path / "run", **overrides)
    model = model if model is not None else tiny_model(tokenizer)
    return VllmRolloutBackend(model, tokenizer, accelerator, config=config)


PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 12, 13, 14, 15, 16]]
PARAMS = SamplingParams(max_new_tokens=5, temperature=0.7, top_p=0.9)


# ------------------------------------------------------------------------------------------------
# VllmClient


def test_client_decodes_json_plain_text_and_empty_answers(fake) -> None:
    client = VllmClient(fake.url, timeout_s=5, max_retries=0)
    models = client.request("GET", "/v1/models")
    assert models["data"][0]["id"] == "fake-model"
    text = client.request("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/a"})
    assert text == "Success: LoRA adapter 'x' added successfully."
    assert client.request("POST", "/collective_rpc", {"method": "reload_weights"}) is None
    fake.rpc_json = True
    assert client.request("POST", "/collective_rpc", {"method": "m"}) == {"results": [None]}
    assert fake.calls("/collective_rpc")[0].body == {"method": "reload_weights"}


def test_client_retries_5xx_with_backoff_then_succeeds(fake, sleeps) -> None:
    fake.fail_next = 2
    client = VllmClient(fake.url + "/", timeout_s=5, max_retries=3)
    assert client.request("GET", "/v1/models")["object"] == "list"
    assert fake.paths() == ["/v1/models"] * 3
    assert sleeps == [0.5, 1.0]


def test_client_gives_up_after_max_retries_naming_url_and_path(fake, sleeps) -> None:
    fake.fail_next = 100
    client = VllmClient(fake.url, timeout_s=5, max_retries=2)
    with pytest.raises(VllmServerError) as info:
        client.request("POST", "/v1/completions", {"prompt": [1]})
    message = str(info.value)
    assert fake.url in message and "POST /v1/completions" in message
    assert "3 attempt(s)" in message and "503" in message and "server overloaded" in message
    assert "is it running?" in message
    assert len(fake.requests) == 3 and sleeps == [0.5, 1.0]


def test_client_does_not_retry_4xx_and_carries_vllms_message(fake, sleeps) -> None:
    fake.reject_next = 1
    client = VllmClient(fake.url, timeout_s=5, max_retries=3)
    with pytest.raises(VllmServerError) as info:
        client.request("POST", "/v1/completions", {"prompt": [1]})
    message = str(info.value)
    assert fake.url in message and "POST /v1/completions answered 400" in message
    assert fake.reject_message in message
    assert len(fake.requests) == 1 and sleeps == []


def test_client_timeout_raises_server_error(fake) -> None:
    # Had the client waited for the (3 s late) answer, it would have succeeded.
    fake.delay_s = 3.0
    client = VllmClient(fake.url, timeout_s=0.2, max_retries=0)
    with pytest.raises(VllmServerError, match="timed out") as info:
        client.request("GET", "/v1/models")
    assert fake.url in str(info.value) and "GET /v1/models" in str(info.value)


def test_client_retries_a_dropped_connection(fake, sleeps) -> None:
    fake.drop_next = 1
    client = VllmClient(fake.url, timeout_s=5, max_retries=1)
    assert client.request("GET", "/v1/models")["data"][0]["id"] == "fake-model"
    assert len(fake.requests) == 2 and sleeps == [0.5]


@pytest.mark.parametrize("knob", ["truncate_next", "garbage_next"])
def test_client_a_cut_off_or_non_http_answer_is_a_server_error(fake, sleeps, knob) -> None:
    setattr(fake, knob, 1)
    client = VllmClient(fake.url, timeout_s=5, max_retries=1)
    assert client.request("GET", "/v1/models")["data"][0]["id"] == "fake-model"
    assert len(fake.requests) == 2


def test_client_closed_port_says_it_is_not_answering() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    client = VllmClient(url, timeout_s=5, max_retries=0)
    with pytest.raises(VllmServerError) as info:
        client.request("GET", "/v1/models")
    message = str(info.value)
    assert message.startswith(f"vLLM server at {url} is not answering GET /v1/models")
    assert "is it running?" in message and "rl-trainer vllm-serve" in message
    assert "\n" not in message


def test_wait_until_up_polls_until_the_server_appears(sleeps) -> None:
    port = closed_port()
    server = FakeVllm(models=("late-model",))
    starter = threading.Timer(0.3, server.start, kwargs={"port": port})
    starter.start()
    try:
        models = VllmClient(f"http://127.0.0.1:{port}", timeout_s=5).wait_until_up(30.0)
    finally:
        starter.join()
        server.stop()
    assert [m["id"] for m in models] == ["late-model"]
    assert sleeps and set(sleeps) == {1.0}  # polled (no backoff: one attempt per poll)


def test_wait_until_up_raises_after_wait_s(fake, sleeps) -> None:
    fake.fail_next = 10**6
    client = VllmClient(fake.url, timeout_s=5, max_retries=3)
    with pytest.raises(VllmServerError, match="answered 503"):
        client.wait_until_up(0.2)
    assert len(fake.requests) >= 2 and len(fake.requests) == len(sleeps) + 1


# ------------------------------------------------------------------------------------------------
# VllmRolloutBackend: requests and answers


def test_generate_sends_one_request_per_prompt_and_maps_the_answers(
    fake, tmp_path, tokenizer, accelerator
) -> None:
    fake.eos_id = tokenizer.eos_token_id
    fake.reverse_choices = True
    backend = make_backend(fake, tmp_path, tokenizer, accelerator, **{"rollout.vllm.sync": "none"})
    out = backend.generate(PROMPTS, 4, PARAMS)

    assert fake.paths() == ["/v1/models"] + ["/v1/completions"] * 3
    bodies = [r.body for r in fake.calls("/v1/completions")]
    assert sorted(b["prompt"] for b in bodies) == sorted(PROMPTS)
    for body in bodies:
        assert body["model"] == "fake-model"
        assert body["n"] == 4 and body["max_tokens"] == 5
        assert body["temperature"] == 0.7 and body["top_p"] == 0.9
        assert body["logprobs"] == 0 and body["return_token_ids"] is True
        assert "top_k" not in body

    assert out.prompt_index == [0] * 4 + [1] * 4 + [2] * 4
    expected = [fake_choice(p, j, 5, tokenizer.eos_token_id) for p in PROMPTS for j in range(4)]
    assert out.completion_ids == [ids for ids, _, _ in expected]
    assert out.logprobs == [lps for _, lps, _ in expected]
    # Choices that stopped keep their EOS token (and its log-prob) last.
    assert out.completion_ids[1][-1] == tokenizer.eos_token_id and len(out.completion_ids[1]) == 4
    assert len(out.completion_ids[0]) == 5


def test_top_k_is_sent_only_when_sampling_with_it(fake, tmp_path, tokenizer, accelerator) -> None:
    backend = make_backend(fake, tmp_path, tokenizer, accelerator, **{"rollout.vllm.sync": "none"})
    backend.generate(PROMPTS[:1], 2, SamplingParams(max_new_tokens=3, temperature=1.0, top_k=5))
    backend.generate(
        PROMPTS[:1], 2, SamplingParams(max_new_tokens=3, temperature=0.0, top_p=0.5, top_k=5)
    )
    sampled, greedy = (r.body for r in fake.calls("/v1/completions"))
    assert sampled["top_k"] == 5 and sampled["temperature"] == 1.0
    assert "top_k" not in greedy
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_bounds_requests_in_flight(
    fake, tmp_path, tokenizer, accelerator, concurrency
) -> None:
    backend = make_backend(
        fake,
        tmp_path,
        tokenizer,
        accelerator,
        **{"rollout.vllm.sync": "none", "rollout.vllm.concurrency": concurrency},
    )
    fake.delay_s = 0.15
    out = backend.generate([[1, 4 + i] for i in range(6)], 2, PARAMS)
    assert out.prompt_index == [i for i in range(6) for _ in range(2)]
    assert fake.max_in_flight == concurrency


@pytest.mark.parametrize(
    ("knob", "value", "expected"),
    [
        ("choices_delta", -1, "returned 3 completions for prompt 0, asked for 4"),
        ("choices_delta", 1, "returned 5 completions for prompt 0, asked for 4"),
        ("logprobs_delta", -1, "returned 5 tokens but 4 log-probs"),
    ],
)
def test_malformed_answers_raise_server_error(
    fake, tmp_path, tokenizer, accelerator, knob, value, expected
) -> None:
    backend = make_backend(fake, tmp_path, tokenizer, accelerator, **{"rollout.vllm.sync": "none"})
    setattr(fake, knob, value)
    with pytest.raises(VllmServerError, match=expected) as info:
        backend.generate(PROMPTS, 4, PARAMS)
    assert fake.url in str(info.value)


def test_a_model_the_server_does_not_serve_lists_what_it_serves(
    tmp_path, tokenizer, accelerator
) -> None:
    with FakeVllm(models=("base", "other")) as server:
        with pytest.raises(VllmServerError) as info:
            make_backend(server, tmp_path, tokenizer, accelerator, **{"rollout.vllm.model": "x"})
        message = str(info.value)
        assert server.url in message and "'x'" in message and "base, other" in message

        backend = make_backend(
            server,
            tmp_path,
            tokenizer,
            accelerator,
            **{"rollout.vllm.model": "other", "rollout.vllm.sync": "none"},
        )
        backend.generate(PROMPTS[:1], 2, PARAMS)
        assert server.calls("/v1/completions")[0].body["model"] == "other"


def test_the_factory_builds_the_backend_from_the_config(
    fake, tmp_path, tokenizer, accelerator
) -> None:
    config = vllm_config(fake.url, tmp_path, **{"rollout.vllm.sync": "none"})
    model = tiny_model(tokenizer)
    backend = create_rollout_backend("vllm", model, tokenizer, accelerator, config=config)
    assert isinstance(backend, VllmRolloutBackend) and backend.base_name == "fake-model"
    with pytest.raises(ValueError, match="needs config="):
        create_rollout_backend("vllm", model, tokenizer, accelerator)


# ------------------------------------------------------------------------------------------------
# weight sync


def _written_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_reload_sync_pushes_the_weights_before_the_first_rollout(
    fake, tmp_path, tokenizer, accelerator
) -> None:
    model = tiny_model(tokenizer)
    assert model.config.tie_word_embeddings
    backend = make_backend(fake, tmp_path, tokenizer, accelerator, model=model)
    assert backend.sync_mode == "reload"
    backend.generate(PROMPTS[:2], 2, PARAMS)

    assert fake.paths() == ["/v1/models", "/collective_rpc"] + ["/v1/completions"] * 2
    folder = (tmp_path / "run" / "vllm_sync" / "weights-0").resolve()
    rpc = fake.calls("/collective_rpc")[0].body
    assert rpc == {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}}
    assert (folder / "config.json").is_file()
    weights = _written_weights(folder)
    embedding = model.get_input_embeddings().weight.detach()
    assert torch.equal(weights["model.embed_tokens.weight"], embedding)
    # A tied head is written as a weight of its own: vLLM's reload would keep a stale one.
    assert torch.equal(weights["lm_head.weight"], embedding)
    assert backend.metrics()["vllm/syncs"] == 1.0


def test_reload_sync_pushes_once_per_rollout_into_alternating_folders(
    fake, tmp_path, tokenizer, accelerator
) -> None:
    model = tiny_model(tokenizer)
    backend = make_backend(fake, tmp_path, tokenizer, accelerator, model=model)
    backend.generate(PROMPTS[:1], 2, PARAMS)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.5)  # an "update"
    for _ in range(3):
        backend.sync_weights()
    backend.generate(PROMPTS[:1], 2, PARAMS)
    backend.generate(PROMPTS[:1], 2, PARAMS)  # nothing changed: no push
    backend.sync_weights()
    backend.generate(PROMPTS[:1], 2, PARAMS)

    folders = [Path(r.body["kwargs"]["weights_path"]).name for r in fake.calls("/collective_rpc")]
    assert folders == ["weights-0", "weights-1", "weights-0"]
    second = _written_weights(Path(fake.calls("/collective_rpc")[1].body["kwargs"]["weights_path"]))
    assert torch.equal(second["model.embed_tokens.weight"], model.get_input_embeddings().weight)
    assert backend.metrics()["vllm/syncs"] == 3.0


def test_a_failed_push_is_tried_again_by_the_next_rollout(
    fake, tmp_path, tokenizer, accelerator
) -> None:
    backend = make_backend(fake, tmp_path, tokenizer, accelerator)
    fake.reject_next = 1  # the /collective_rpc
    with pytest.raises(VllmServerError, match="collective_rpc answered 400"):
        backend.generate(PROMPTS[:1], 2, PARAMS)
    assert fake.calls("/v1/completions") == []
    backend.generate(PROMPTS[:1], 2, PARAMS)
    assert fake.paths()[1:] == ["/collective_rpc", "/collective_rpc", "/v1/completions"]
    assert backend.metrics()["vllm/syncs"] == 1.0


def test_sync_none_never_pushes(fake, tmp_path, tokenizer, accelerator) -> None:
    backend = make_backend(fake, tmp_path, tokenizer, accelerator, **{"rollout.vllm.sync": "none"})
    backend.generate(PROMPTS[:1], 2, PARAMS)
    backend.sync_weights()
    backend.generate(PROMPTS[:1], 2, PARAMS)
    assert fake.paths() == ["/v1/models"] + ["/v1/completions"] * 2
    assert backend.metrics()["vllm/syncs"] == 0.0
    assert not (tmp_path / "run" / "vllm_sync").exists()


def test_lora_sync_puts_the_base_back_once_then_hot_loads_the_adapter(
    fake, tmp_path, tokenizer, accelerator
) -> None:
    from rl_trainer.config import LoraConfig
    from rl_trainer.models import apply_lora

    base = tiny_model(tokenizer)
    q_proj = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = apply_lora(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    shared = tmp_path / "shared"
    backend = make_backend(
        fake,
        tmp_path,
        tokenizer,
        accelerator,
        model=model,
        **{"rollout.vllm.lora_name": "policy-a", "rollout.vllm.sync_dir": str(shared)},
    )
    assert backend.sync_mode == "lora"
    backend.generate(PROMPTS[:2], 2, PARAMS)
    backend.sync_weights()
    backend.generate(PROMPTS[:1], 2, PARAMS)

    assert fake.paths() == [
        "/v1/models",
        "/collective_rpc",  # the base weights, once
        "/v1/load_lora_adapter",
        "/v1/completions",
        "/v1/completions",
        "/v1/load_lora_adapter",
        "/v1/completions",
    ]
    base_folder = Path(fake.calls("/collective_rpc")[0].body["kwargs"]["weights_path"])
    written = _written_weights(base_folder)
    assert not [name for name in written if "lora_" in name or "base_layer" in name]
    assert torch.equal(written["model.layers.0.self_attn.q_proj.weight"], q_proj)
    assert torch.equal(written["lm_head.weight"], written["model.embed_tokens.weight"])

    loads = [r.body for r in fake.calls("/v1/load_lora_adapter")]
    folders = [(shared / "lora-0").resolve(), (shared / "lora-1").resolve()]
    assert loads == [
        {"lora_name": "policy-a", "lora_path": str(folder), "load_inplace": True}
        for folder in folders
    ]
    assert all((folder / "adapter_config.json").is_file() for folder in folders)
    assert {r.body["model"] for r in fake.calls("/v1/completions")} == {"policy-a"}
    assert backend.metrics()["vllm/syncs"] == 2.0


def test_sync_lora_without_lora_is_a_value_error(fake, tmp_path, tokenizer, accelerator) -> None:
    with pytest.raises(ValueError, match="rollout.vllm.sync=lora needs model.lora.enabled=true"):
        make_backend(fake, tmp_path, tokenizer, accelerator, **{"rollout.vllm.sync": "lora"})


def test_sync_reload_of_a_lora_model_is_a_value_error(
    fake, tmp_path, tokenizer, accelerator
) -> None:
    """Reloading would write the adapter-wrapped names (base_model.model..., lora_A), which the
    server cannot map: refused before any rollout."""
    from rl_trainer.config import LoraConfig
    from rl_trainer.models import apply_lora

    model = apply_lora(tiny_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="use sync=lora"):
        make_backend(
            fake, tmp_path, tokenizer, accelerator, model=model, **{"rollout.vllm.sync": "reload"}
        )
    assert not [r for r in fake.requests if r.path != "/v1/models"]


# ------------------------------------------------------------------------------------------------
# logprob_mismatch


def _batch_with(old: torch.Tensor, mask: torch.Tensor):
    from rl_trainer.batch import RolloutBatch

    n, t = old.shape
    return RolloutBatch(
        input_ids=torch.zeros(n, t + 2, dtype=torch.long),
        attention_mask=torch.ones(n, t + 2, dtype=torch.long),
        completion_ids=torch.zeros(n, t, dtype=torch.long),
        completion_mask=mask,
        advantages=torch.zeros(n),
        old_logprobs=old,
    )


def test_logprob_mismatch_is_over_masked_tokens_only(accelerator) -> None:
    from rl_trainer.rollout_step import logprob_mismatch

    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    sampled = torch.tensor([[-1.1, -2.0, -9.0], [-0.2, -0.5, -50.0]])  # big gaps on padding
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    metrics = logprob_mismatch(sampled, _batch_with(old, mask), accelerator=accelerator)
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx((0.1 + 0.0 + 0.3 + 0.0) / 4)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(0.3)

    empty = logprob_mismatch(sampled, _batch_with(old, torch.zeros(2, 3)), accelerator=accelerator)
    assert empty == {"rollout/logprob_diff_mean": 0.0, "rollout/logprob_diff_max": 0.0}


# ------------------------------------------------------------------------------------------------
# rl-trainer vllm-serve


def test_untied_copy_gives_the_head_a_weight_of_its_own(tiny_model_dir, tmp_path) -> None:
    from rl_trainer.vllm_serve import untied_copy

    assert json.loads((tiny_model_dir / "config.json").read_text())["tie_word_embeddings"]
    cache = tmp_path / "cache"
    copy = untied_copy(tiny_model_dir, cache)
    assert copy.parent == cache and copy != tiny_model_dir
    assert json.loads((copy / "config.json").read_text())["tie_word_embeddings"] is False
    head = load_file(str(copy / "lm_head.safetensors"))["lm_head.weight"]
    with safe_open(str(tiny_model_dir / "model.safetensors"), framework="pt") as fh:
        assert torch.equal(head, fh.get_tensor("model.embed_tokens.weight"))
    assert [p.name for p in cache.iterdir()] == [copy.name]  # no .partial left

    marker = copy / "lm_head.safetensors"
    written = marker.stat().st_mtime_ns
    assert untied_copy(tiny_model_dir, cache) == copy
    assert marker.stat().st_mtime_ns == written


def test_untied_copy_serves_an_untied_model_where_it_is(tmp_path) -> None:
    from rl_trainer.vllm_serve import untied_copy

    model_dir = tmp_path / "untied"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    assert untied_copy(model_dir, tmp_path / "cache") == model_dir
    assert not (tmp_path / "cache").exists()


def test_untied_copy_of_a_folder_without_config_names_it(tmp_path) -> None:
    from rl_trainer.vllm_serve import untied_copy

    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty" / "config.json")):
        untied_copy(tmp_path / "empty", tmp_path / "cache")


def test_print_command_switches_on_what_the_sync_needs(tiny_model_dir, tmp_path, capsys) -> None:
    from rl_trainer.vllm_serve import main

    argv = ["--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), "--print-command"]
    assert main([*argv, "--served-model-name", "tiny", "--port", "8123"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    assert "VLLM_SERVER_DEV_MODE=1" in line and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in line
    assert "--enable-lora --max-lora-rank 64" in line
    assert "--logprobs-mode processed_logprobs" in line
    assert "--served-model-name tiny" in line and "--port 8123" in line
    assert "-untied-" in line  # the tied tiny model is served from its untied copy
    assert ("--enforce-eager" in line) == (not torch.cuda.is_available())

    assert main([*argv, "--gpus", "0"]) == 0
    line = capsys.readouterr().out
    assert "CUDA_VISIBLE_DEVICES=0" in line and "--enforce-eager" not in line


def test_print_command_without_lora_and_with_vllm_arguments(
    tiny_model_dir, tmp_path, capsys
) -> None:
    from rl_trainer.vllm_serve import main

    argv = ["--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), "--print-command"]
    assert main([*argv, "--lora-rank", "0", "--", "--seed", "3", "--max-num-seqs", "4"]) == 0
    line = capsys.readouterr().out.strip()
    assert "--enable-lora" not in line
    assert line.endswith("--seed 3 --max-num-seqs 4")


def test_a_missing_interpreter_exits_2_with_one_line(tiny_model_dir, tmp_path, capsys) -> None:
    from rl_trainer.vllm_serve import main

    missing = tmp_path / "no-such-env" / "bin" / "python"
    argv = ["--model", str(tiny_model_dir), "--cache-dir", str(tmp_path), "--python", str(missing)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "RL_TRAINER_VLLM_PYTHON" in err


# ------------------------------------------------------------------------------------------------
# rl-trainer train with rollout.backend=vllm


def _train_argv(model_dir: Path, tmp_path: Path, url: str) -> list[str]:
    data = write_jsonl(
        tmp_path / "data.jsonl", [{"prompt": f"say {d}", "answer": d} for d in "0123"]
    )
    return [
        "train",
        f"model.path={model_dir}",
        f"data.path={data}",
        f"logging.output_dir={tmp_path / 'out'}",
        "logging.tensorboard=false",
        "logging.progress_bar=false",
        "data.max_prompt_length=32",
        "rollout.max_new_tokens=8",
        "rollout.backend=vllm",
        f"rollout.vllm.url={url}",
    ]


def test_train_against_a_server_that_is_down_exits_1_naming_it(
    tiny_model_dir, tmp_path, capsys
) -> None:
    from rl_trainer.cli import main

    url = f"http://127.0.0.1:{closed_port()}"
    assert main(_train_argv(tiny_model_dir, tmp_path, url)) == 1
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("rl-trainer:")]
    assert len(ours) == 1
    assert f"vLLM server at {url} is not answering" in ours[0]


def test_train_with_a_url_without_scheme_exits_2_naming_the_key(
    tiny_model_dir, tmp_path, capsys
) -> None:
    from rl_trainer.cli import main

    assert main(_train_argv(tiny_model_dir, tmp_path, "localhost:8000")) == 2
    err = capsys.readouterr().err
    assert "rollout.vllm.url" in err and "localhost:8000" in err

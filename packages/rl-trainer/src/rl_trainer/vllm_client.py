"""The ``vllm`` rollout backend: completions from a vLLM OpenAI-compatible server.

vLLM pins its own torch, so it runs in its own environment (``rl-trainer vllm-serve`` starts
it); rl-trainer only talks HTTP to it, with the standard library (no ``vllm`` import here).

Each prompt is one ``/v1/completions`` request with the prompt's token ids and ``n`` = the
group size; the server returns the sampled token ids (``return_token_ids``) and each token's
log-prob (``logprobs: 0``). Requests run ``concurrency`` at a time, each with a timeout and
retries with backoff; a server that is down or dies raises :class:`VllmServerError` naming the
URL, never a hang.

Weight sync: after an optimiser update the trainer calls :meth:`sync_weights`, which only
marks the server stale; the next :meth:`generate` brings it up to date first, so a rollout
costs one sync however many updates came before it.

- ``lora``: the adapter is saved (a few MB) and hot-loaded in place under one name
  (``/v1/load_lora_adapter`` with ``load_inplace``); generation then asks for that name. The
  first sync also reloads the base weights once (the server may hold another run's). The
  server needs ``--enable-lora``, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and dev mode.
- ``reload``: the full weights are saved as safetensors and the server reloads them from that
  folder (``/collective_rpc`` ``reload_weights`` with ``weights_path``); the server needs
  ``VLLM_SERVER_DEV_MODE=1``. Costs a write and a read of the whole model per rollout.

Only the main process writes and loads; every process waits for it.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from rl_trainer.rollout import RolloutOutput, SamplingParams

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase

    from rl_trainer.config import TrainerConfig, VllmConfig

logger = logging.getLogger(__name__)

SERVE_HINT = "start one with `rl-trainer vllm-serve --model DIR` (see rl-trainer's README)"


class VllmServerError(RuntimeError):
    """The vLLM server could not be reached, or answered with an error (the message names the
    URL and what to do)."""


class VllmClient:
    """A small JSON-over-HTTP client for one vLLM server: timeouts, retries, clear errors."""

    def __init__(self, url: str, *, timeout_s: float = 300.0, max_retries: int = 3) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries

    def request(
        self, method: str, path: str, body: Any = None, *, retries: int | None = None
    ) -> Any:
        """Returns the decoded JSON answer of ``method path`` (the text of a non-JSON answer,
        None for an empty one).

        Connection failures, timeouts and 5xx answers are retried ``max_retries`` times with
        exponential backoff (0.5 s, 1 s, 2 s, ...); a 4xx answer is not. Raises
        VllmServerError naming the URL.
        """
        url = self.url + path
        data = None if body is None else json.dumps(body).encode()
        attempts = 1 + (self.max_retries if retries is None else retries)
        problem = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            request = urllib.request.Request(url, data=data, method=method)
            request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    raw = response.read()
                    kind = response.headers.get("Content-Type", "")
                if not raw.strip():
                    return None
                if "json" not in kind:  # e.g. the LoRA endpoints answer in plain text
                    return raw.decode("utf-8", "replace")
                return json.loads(raw)
            except urllib.error.HTTPError as exc:
                detail = _error_detail(exc)
                if exc.code < 500:
                    raise VllmServerError(
                        f"vLLM server at {self.url}: {method} {path} answered {exc.code}: {detail}"
                    ) from None
                problem = f"answered {exc.code}: {detail}"
            except (
                urllib.error.URLError,
                TimeoutError,
                ConnectionError,
                OSError,
                http.client.HTTPException,  # an answer cut off, or not HTTP at all
            ) as exc:
                reason = getattr(exc, "reason", exc)
                problem = f"{type(reason).__name__}: {reason}" if str(reason) else repr(reason)
            except json.JSONDecodeError as exc:
                problem = f"an answer that is not JSON ({exc})"
        raise VllmServerError(
            f"vLLM server at {self.url} is not answering {method} {path} "
            f"({attempts} attempt(s), last: {problem}); is it running? {SERVE_HINT}"
        )

    def wait_until_up(self, wait_s: float) -> list[dict[str, Any]]:
        """Returns the served models (GET /v1/models), polling for up to ``wait_s`` seconds."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                answer = self.request("GET", "/v1/models", retries=0)
                return list(answer.get("data", [])) if isinstance(answer, dict) else []
            except VllmServerError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode("utf-8", "replace")
    except OSError:
        return exc.reason or ""
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return " ".join(text.split())[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or body)[:300]


def _base_weights(model: nn.Module) -> dict[str, Any]:
    """Returns the base model's weights of a PEFT model, under the base model's own names
    (adapter tensors left out, ``.base_layer.`` folded back)."""
    get_base = getattr(model, "get_base_model", None)
    base: nn.Module = get_base() if callable(get_base) else model
    return {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in base.state_dict().items()
        if "lora_" not in name
    }


class VllmRolloutBackend:
    """Samples from a vLLM server; keeps the server's weights equal to the trained policy."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        accelerator: Accelerator,
        *,
        config: TrainerConfig,
        client: VllmClient | None = None,
    ) -> None:
        options: VllmConfig = config.rollout.vllm
        self.model = model
        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.options = options
        self.client = client or VllmClient(
            options.url, timeout_s=options.timeout_s, max_retries=options.max_retries
        )
        served = self.client.wait_until_up(options.wait_s)
        names = [str(m.get("id")) for m in served if m.get("id")]
        if options.model is not None and options.model not in names:
            raise VllmServerError(
                f"vLLM server at {self.client.url} does not serve {options.model!r} "
                f"(it serves: {', '.join(names) or 'nothing'}); set rollout.vllm.model"
            )
        if not names:
            raise VllmServerError(f"vLLM server at {self.client.url} serves no model")
        self.base_name = options.model or names[0]
        from rl_trainer.models import is_peft_model

        self.uses_lora = is_peft_model(accelerator.unwrap_model(model))
        sync = options.sync
        if sync == "auto":
            sync = "lora" if self.uses_lora else "reload"
        if sync == "lora" and not self.uses_lora:
            raise ValueError("rollout.vllm.sync=lora needs model.lora.enabled=true")
        if sync == "reload" and self.uses_lora:
            raise ValueError(
                "rollout.vllm.sync=reload with model.lora.enabled=true would write the "
                "adapter-wrapped weights, which the server cannot map: use sync=lora (or auto)"
            )
        self.sync_mode = sync
        root = options.sync_dir or str(Path(config.logging.output_dir) / "vllm_sync")
        self.sync_root = Path(root).resolve()
        self.stale = sync != "none"
        self.base_pushed = False
        self.syncs = 0
        self.sync_s = 0.0
        self.served_name = self.base_name

    # ----------------------------------------------------------------------------------------
    # weights

    def sync_weights(self) -> None:
        """Marks the server's weights stale: the next rollout loads the new ones first."""
        if self.sync_mode != "none":
            self.stale = True

    def _bring_up_to_date(self) -> None:
        if not self.stale:
            return
        started = time.perf_counter()
        acc = self.accelerator
        error: BaseException | None = None
        if acc.is_main_process:
            try:
                self._push()
            except BaseException as exc:  # every process must reach the barrier
                error = exc
        acc.wait_for_everyone()
        if error is not None:
            raise error
        if self.sync_mode == "lora":
            self.served_name = self.options.lora_name
        self.stale = False
        self.syncs += 1
        self.sync_s += time.perf_counter() - started

    def _push(self) -> None:
        """Writes the current weights (or adapter) and has the server load them."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.sync_mode == "lora":
            if not self.base_pushed:
                # The server may hold other base weights (another run's reloads): the first
                # sync puts the base model back, so that base + adapter is exactly the policy.
                self._reload(_base_weights(unwrapped), unwrapped)
                self.base_pushed = True
            folder = self._folder("lora")
            unwrapped.save_pretrained(folder)  # the adapter only (PEFT)
            self.client.request(
                "POST",
                "/v1/load_lora_adapter",
                {
                    "lora_name": self.options.lora_name,
                    "lora_path": str(folder),
                    "load_inplace": True,
                },
            )
            return
        self._reload(dict(self.accelerator.get_state_dict(self.model)), unwrapped)

    def _folder(self, kind: str) -> Path:
        # Two folders in turn: the server never reads a folder while it is being rewritten.
        folder = self.sync_root / f"{kind}-{self.syncs % 2}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def _reload(self, state: dict[str, Any], model: nn.Module) -> None:
        """Writes ``state`` as a safetensors checkpoint and has the server reload from it."""
        from safetensors.torch import save_file

        config = getattr(model, "config", None)
        if config is not None and getattr(config, "tie_word_embeddings", False):
            # vLLM's in-place reload loads the embedding but keeps the LM head it had: a tied
            # head goes stale. `rl-trainer vllm-serve` unties it on the server, and the head
            # is written out here as a weight of its own.
            embedding = next(
                (v for k, v in state.items() if k.endswith("embed_tokens.weight")), None
            )
            if embedding is not None and "lm_head.weight" not in state:
                state["lm_head.weight"] = embedding
        folder = self._folder("weights")
        seen: set[int] = set()
        tensors = {}
        for name, tensor in state.items():
            tensor = tensor.detach().contiguous()
            if tensor.data_ptr() in seen:  # safetensors refuses shared storage
                tensor = tensor.clone()
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.cpu()
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        if config is not None:
            config.save_pretrained(folder)
        self.client.request(
            "POST",
            "/collective_rpc",
            {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}},
        )

    # ----------------------------------------------------------------------------------------
    # sampling

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], num_samples: int, params: SamplingParams
    ) -> RolloutOutput:
        """Returns ``num_samples`` completions per prompt, prompt-major, with token log-probs."""
        self._bring_up_to_date()
        bodies = [self._body(list(map(int, ids)), num_samples, params) for ids in prompt_ids]
        workers = max(1, min(self.options.concurrency, len(bodies)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            answers = list(pool.map(self._complete, bodies))
        index: list[int] = []
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        for p, answer in enumerate(answers):
            choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
            if len(choices) != num_samples:
                raise VllmServerError(
                    f"vLLM server at {self.client.url} returned {len(choices)} completions for "
                    f"prompt {p}, asked for {num_samples}"
                )
            for choice in choices:
                tokens = [int(t) for t in choice.get("token_ids") or []]
                values = (choice.get("logprobs") or {}).get("token_logprobs") or []
                if len(values) != len(tokens):
                    raise VllmServerError(
                        f"vLLM server at {self.client.url} returned {len(tokens)} tokens but "
                        f"{len(values)} log-probs (is it vLLM >= 0.10 with return_token_ids?)"
                    )
                index.append(p)
                completions.append(tokens)
                logprobs.append([float(v) for v in values])
        return RolloutOutput(prompt_index=index, completion_ids=completions, logprobs=logprobs)

    def _complete(self, body: dict[str, Any]) -> Any:
        return self.client.request("POST", "/v1/completions", body)

    def _body(self, ids: list[int], n: int, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.served_name,
            "prompt": ids,
            "n": n,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p if params.temperature > 0 else 1.0,
            "logprobs": 0,
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if params.top_k > 0 and params.temperature > 0:
            body["top_k"] = params.top_k
        return body

    def metrics(self) -> dict[str, float]:
        """Returns the sync counters (``vllm/syncs``, ``vllm/sync_s``)."""
        return {"vllm/syncs": float(self.syncs), "vllm/sync_s": self.sync_s}

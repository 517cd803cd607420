"""``openai``: any OpenAI-compatible server (vLLM, SGLang, ``transformers serve``).

Prompts are rendered here (the same template as training) and sent to ``/v1/completions``
as text (the server tokenizes it: at special-token boundaries its tokens can differ from the
training tokens, e.g. ``▁[INST]`` vs ``[INST]`` right after the BOS it adds) or, with
``openai.prompt_format: ids``, as our token ids (exactly the training tokens), several at a time (``openai.concurrency``), each with a timeout and
retries with backoff on connection errors, timeouts and 5xx / 429 answers. Before the first
episode the server is asked for its models (``/v1/models``): an unreachable server, or one that
does not serve ``openai.served_model``, is an error.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
import urllib.error
import urllib.request

from natscale.config.eval import LoopConfig, OpenAIConfig, SamplingConfig
from natscale.eval.backends import OBSERVATION_STOP, Generation, Request, cut_at_stops
from natscale.eval.errors import EvalError
from natscale.eval.prompting import Prompter


class EndpointError(RuntimeError):
    """The server failed a request after all retries (the run stops; it is resumable)."""


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        url: str,
        prompter: Prompter,
        cfg: OpenAIConfig,
        loop: LoopConfig,
        sampling: SamplingConfig,
    ) -> None:
        base = url.rstrip("/")
        self.base = base[: -len("/v1")] if base.endswith("/v1") else base
        self.prompter, self.cfg, self.loop, self.sampling = prompter, cfg, loop, sampling
        self.served_model = cfg.served_model
        self.key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.max_context = loop.max_context
        eot = prompter.end_of_turn
        react = loop.protocol == "react"
        self.stops = [s for s in (eot, OBSERVATION_STOP if react else "") if s]
        self.pool = cf.ThreadPoolExecutor(max_workers=cfg.concurrency)

    def _post(self, path: str, body: dict | None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base + path, data=data, method="POST" if body else "GET")
        req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def check(self, question_ids: list[str]) -> None:
        try:
            listing = self._post("/v1/models", None)
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            raise EvalError(
                f"endpoint {self.base}/v1/models unreachable or not OpenAI-compatible: {exc}"
            ) from None
        served = [m.get("id") for m in listing.get("data", []) if isinstance(m, dict)]
        if self.served_model is None:
            if len(served) != 1:
                raise EvalError(
                    f"endpoint {self.base} serves {served}; set openai.served_model to one of them"
                )
            self.served_model = served[0]
        elif served and self.served_model not in served:
            raise EvalError(
                f"endpoint {self.base} does not serve {self.served_model!r} (it serves {served}); "
                "check openai.served_model"
            )

    def generate(self, requests: list[Request]) -> list[Generation]:
        return list(self.pool.map(self._one, requests))

    def _one(self, r: Request) -> Generation:
        prompt: str | list[int]
        if self.cfg.prompt_format == "ids":
            prompt = self.prompter.ids(r.messages)
        else:
            prompt = self.prompter.text(r.messages)
            bos = self.prompter.tokenizer.bos_token
            if self.cfg.strip_bos and bos and prompt.startswith(bos):
                prompt = prompt[len(bos) :]
        if self.max_context is not None:
            n = len(prompt) if isinstance(prompt, list) else len(self.prompter.ids(r.messages))
            if n + 1 > self.max_context:
                return Generation("", 0, overflow=True)
        body = {
            "model": self.served_model,
            "prompt": prompt,
            "max_tokens": self.loop.max_new_tokens,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "stop": self.stops,
        }
        if self.sampling.temperature > 0:
            body["seed"] = r.seed
        body.update(self.cfg.extra_body)
        delay = 0.5
        for attempt in range(self.cfg.retries + 1):
            try:
                reply = self._post("/v1/completions", body)
                choice = reply["choices"][0]
                text = choice.get("text") or ""
                usage = reply.get("usage") or {}
                tokens = int(usage.get("completion_tokens") or len(text.split()))
                cut = choice.get("finish_reason") == "length"
                return Generation(cut_at_stops(text, self.stops), tokens, truncated=cut)
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    detail = exc.read()[:300].decode("utf-8", "replace")
                    raise EndpointError(
                        f"{self.base}/v1/completions: HTTP {exc.code}: {detail}"
                    ) from None
                error: Exception = exc
            except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as exc:
                error = exc
            if attempt < self.cfg.retries:
                time.sleep(delay)
                delay *= 2
        raise EndpointError(
            f"{self.base}/v1/completions failed after {self.cfg.retries + 1} tries: {error}"
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

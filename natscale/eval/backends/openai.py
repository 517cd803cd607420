"""``openai``: any OpenAI-compatible server (vLLM, SGLang, ``transformers serve``, hosted APIs).

With ``openai.api: completions`` (the default) prompts are rendered here (the same template as
training) and sent to ``/v1/completions`` as text (the server tokenizes it: at special-token
boundaries its tokens can differ from the training tokens, e.g. ``▁[INST]`` vs ``[INST]`` right
after the BOS it adds) or, with ``openai.prompt_format: ids``, as our token ids (exactly the
training tokens). With ``openai.api: chat`` the messages go to ``/v1/chat/completions`` and the
server renders them with its own chat template, offers the tools and parses the calls
(:func:`chat_messages`): the way to run a model that only a chat endpoint serves (a hosted
teacher collecting trajectories, a server with its own tool parser).

Requests run several at a time (``openai.concurrency``), each with a timeout and retries with
backoff on connection errors, timeouts and 5xx / 429 answers. Before the first episode the
server is asked for its models (``/v1/models``): an unreachable server, or one that does not
serve ``openai.served_model``, is an error.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from natscale.agent.tool_calls import THINK_START, ParsedTurn
from natscale.config.eval import LoopConfig, OpenAIConfig, SamplingConfig
from natscale.data.render.messages import Message
from natscale.eval.backends import OBSERVATION_STOP, Generation, Request, cut_at_stops
from natscale.eval.errors import EvalError
from natscale.eval.prompting import Prompter

# what servers answer (HTTP 400) to a prompt that leaves no room in the model's context: vLLM
# "maximum context length is", OpenAI "context_length_exceeded", transformers serve "takes at most"
_CONTEXT_FULL = re.compile(r"context.length|maximum context|takes at most", re.IGNORECASE)
# what `transformers serve` answers (HTTP 400) when its response parser cannot read the turn the
# model wrote (vLLM returns such a turn as text instead)
_UNREADABLE = re.compile(r"could not parse", re.IGNORECASE)


def chat_messages(messages: list[Message], observation_role: str) -> list[dict[str, Any]]:
    """``messages`` as ``/v1/chat/completions`` takes them: a call's arguments as a JSON string,
    the results after it as ``tool`` messages with its ``id`` (in order), other observations
    with ``observation_role`` (the ReAct ``Observation:`` turns). An assistant turn's reasoning
    stays inline in ``<think>`` tags, as training renders it, for the server's template to keep
    or drop as it does in training."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            msg["content"] = m.content or None
            msg["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                }
                for c in m.tool_calls
            ]
            pending += [c["id"] for c in m.tool_calls]
        elif m.role == "observation" and pending:
            msg = {"role": "tool", "tool_call_id": pending.pop(0), "content": m.content}
        elif m.role == "observation":
            msg["role"] = observation_role
        out.append(msg)
    return out


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
        if self.cfg.api == "chat":
            return self._send("/v1/chat/completions", self._chat_body(r), self._chat_generation)
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
        body = {**self._sampling(r), "prompt": prompt, "stop": self.stops}
        return self._send("/v1/completions", body, self._completion)

    def _sampling(self, r: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.served_model,
            "max_tokens": self.loop.max_new_tokens,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
        }
        if self.sampling.temperature > 0:
            body["seed"] = r.seed
        return body

    def _chat_body(self, r: Request) -> dict[str, Any]:
        body = self._sampling(r)
        body["messages"] = chat_messages(r.messages, self.prompter.cfg.observation_role)
        if self.stops:  # some reasoning APIs refuse `stop` altogether
            body["stop"] = self.stops
        if self.prompter.tools:
            body["tools"] = self.prompter.tools
        if self.prompter.cfg.chat_template_kwargs:  # vLLM, SGLang, transformers serve
            body["chat_template_kwargs"] = self.prompter.cfg.chat_template_kwargs
        return body

    def _completion(self, reply: dict) -> Generation:
        choice = reply["choices"][0]
        text = choice.get("text") or ""
        return Generation(
            cut_at_stops(text, self.stops),
            _completion_tokens(reply, text),
            truncated=choice.get("finish_reason") == "length",
        )

    def _chat_generation(self, reply: dict) -> Generation:
        choice = reply["choices"][0]
        message = choice["message"]
        if not isinstance(message, dict):
            raise ValueError(f"the choice's message is {type(message).__name__}")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise ValueError("the message's content is not text")
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        text = cut_at_stops(content, self.stops)
        if reasoning and THINK_START not in content:  # the history keeps it inline, as prepare
            text = ParsedTurn(text, str(reasoning).strip(), []).history_content()
        return Generation(
            text,
            _completion_tokens(reply, text),
            truncated=choice.get("finish_reason") == "length",
            message=message,
        )

    def _send(self, path: str, body: dict, read: Callable[[dict], Generation]) -> Generation:
        """POST ``body`` (with ``openai.extra_body``; a key set to null there is removed) and
        ``read`` the reply, retrying; a prompt the server says is too long is an overflow."""
        body = {k: v for k, v in {**body, **self.cfg.extra_body}.items() if v is not None}
        delay = 0.5
        for attempt in range(self.cfg.retries + 1):
            try:
                return read(self._post(path, body))
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    detail = exc.read()[:300].decode("utf-8", "replace")
                    if exc.code == 400 and _CONTEXT_FULL.search(detail):
                        return Generation("", 0, overflow=True)
                    if exc.code == 400 and _UNREADABLE.search(detail):
                        why = f"the server could not read the turn: {detail.strip()[:200]}"
                        return Generation("", 0, error=why)
                    raise EndpointError(f"{self.base}{path}: HTTP {exc.code}: {detail}") from None
                error: Exception = exc
            except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as exc:
                error = exc
            if attempt < self.cfg.retries:
                time.sleep(delay)
                delay *= 2
        raise EndpointError(f"{self.base}{path} failed after {self.cfg.retries + 1} tries: {error}")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _completion_tokens(reply: dict, text: str) -> int:
    usage = reply.get("usage") or {}
    return int(usage.get("completion_tokens") or len(text.split()))

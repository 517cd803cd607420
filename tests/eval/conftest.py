"""Fixtures for the eval tests: configs over the bundled data, a tiny random HF model."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DATA = EXAMPLES / "math_react"
TOKENIZER = EXAMPLES / "tokenizer"


def write_config(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def scripted_fields(out: Path, **extra) -> dict:
    fields = {
        "backend": "scripted",
        "output": str(out),
        "questions": [str(DATA / "questions.jsonl")],
        "task": "math",
        "scripted": {"trajectories": [str(DATA / "trajectories.json")]},
        "prompt": {"file": str(DATA / "prompt.json")},
    }
    fields.update(extra)
    return fields


def endpoint_fields(url: str, tmp_path: Path, questions: list[dict], **fields) -> dict:
    """An eval config of ``backend: openai`` at ``url`` on ``questions`` (written under
    ``tmp_path``, as is the output), then ``fields``."""
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    base = {"backend": "openai", "model": url, "output": str(tmp_path / "run")}
    return {**base, "questions": [str(path)], "bootstrap": 0, **fields}


def bundled_by_id() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for t in json.loads((DATA / "trajectories.json").read_text()):
        out.setdefault(t["id"], []).append(t)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_tiny_model(out: Path, *, seed: int = 0) -> Path:
    """A random tiny Llama (examples/models/tiny-llama) saved with the bundled tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = json.loads((EXAMPLES / "models" / "tiny-llama" / "config.json").read_text())
    cfg = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("architectures",)})
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@contextlib.contextmanager
def openai_endpoint(
    answer: Callable[[str, dict], tuple[int, dict]],
) -> Iterator[tuple[str, list[dict]]]:
    """A stand-in for an OpenAI-compatible server on 127.0.0.1: ``/v1/models`` lists one model
    (``served``) and a POST to ``path`` answers ``answer(path, body)`` = (HTTP status, JSON
    body). Yields the base URL and the list of the request bodies it was sent."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"data": [{"id": "served"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            self._send(*answer(self.path, body))

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def completions_endpoint(
    reply: Callable[[str], tuple[str, str]],
) -> Iterator[tuple[str, list[str]]]:
    """:func:`openai_endpoint` answering ``/v1/completions`` with ``reply(prompt)`` = (text,
    finish_reason). Yields the base URL and the list of the prompts it was sent."""
    prompts: list[str] = []

    def answer(path: str, body: dict) -> tuple[int, dict]:
        assert path == "/v1/completions", path
        prompts.append(body["prompt"])
        text, reason = reply(body["prompt"])
        usage = {"completion_tokens": len(text.split())}
        return 200, {"choices": [{"text": text, "finish_reason": reason}], "usage": usage}

    with openai_endpoint(answer) as (url, _):
        yield url, prompts

"""A Llama-2-sized tokenizer for benchmarks: 32,000-piece SentencePiece BPE, trained locally.

    python benchmarks/data/llama_tokenizer.py            # build (or reuse) it; prints its folder

The bundled tokenizer (``examples/tokenizer``) has 2,048 pieces; prepare's speed with a real
model's tokenizer depends on its size and kind, so benchmarks can use this one instead
(``bench_prepare.py --tokenizer llama32k``). It is trained with Llama-2's SentencePiece settings
(BPE, byte fallback, split digits, dummy prefix, identity normalisation, ``<unk> <s> </s>`` =
0, 1, 2) on text made here: the benchmark's synthetic ReAct trajectories plus the Python standard
library's source files (plenty of distinct English and code words, so that 32,000 pieces are
learnt), then converted to a Hugging Face fast ``LlamaTokenizer`` with the same code as the
bundled one.

Its ``tokenizer_config.json`` carries Llama-2-chat's chat template, as the published chat
models' folders do, so ``template: auto`` picks ``hf`` (the chat template) for it, as it does for
a real Llama-2-chat folder; ``template: llama2`` is natscale's built-in rendering of the same
format.

``transformers`` builds a ``LlamaTokenizer``'s pipeline from its class (a ``Metaspace``
pre-tokeniser, ``prepend_scheme: first``, no normaliser), whatever normaliser a ``tokenizer.json``
holds, so this is the pipeline a real Llama-2 folder gets too. The ``<pad>`` the bundled
conversion adds makes it 32,001 tokens.

The folder is cached under ``$NATSCALE_CACHE/bench/`` (default ``.cache/natscale/bench``) by a
hash of the settings, and reused; nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402

VOCAB_SIZE = 32000
# Llama-2-chat's chat template (its tokenizer_config.json), verbatim
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)
SETTINGS = {
    "version": 1,
    "vocab_size": VOCAB_SIZE,
    "synth_trajectories": 3000,
    "stdlib_bytes": 24_000_000,
    "max_sentences": 1_500_000,
}


def cache_root() -> Path:
    base = os.environ.get("NATSCALE_CACHE") or str(REPO / ".cache" / "natscale")
    return Path(base) / "bench"


def _stdlib_lines(budget: int) -> list[str]:
    """Lines of the standard library's ``.py`` files (sorted walk; up to ``budget`` bytes)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, used = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            line = line.strip()
            if len(line) >= 8:
                out.append(line)
                used += len(line)
        if used >= budget:
            break
    return out


class _CountTokens:
    """A stand-in tokenizer for :func:`synth.make` (it only sizes the trajectories)."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [0] * max(1, len(text) // 4)}


def corpus() -> list[str]:
    trajs, questions = synth.make(SETTINGS["synth_trajectories"], _CountTokens(), 600, seed=7)
    texts = [synth.INSTRUCTION, *(q["question"] for q in questions)]
    texts += [m["content"] for t in trajs for m in t["conversations"]]
    texts += _stdlib_lines(SETTINGS["stdlib_bytes"])
    random.Random(0).shuffle(texts)
    return texts


def train(texts: list[str]) -> bytes:
    from natscale.agent.scripted.assets import train_sentencepiece

    # Llama-2's own: no pad piece, 99.995% of the characters; sampled, on every core
    return train_sentencepiece(
        texts,
        VOCAB_SIZE,
        character_coverage=0.99995,
        pad_id=-1,
        pad_piece=None,
        input_sentence_size=SETTINGS["max_sentences"],
        shuffle_input_sentence=True,
        num_threads=os.cpu_count() or 1,
    )


def build(*, say=print) -> Path:
    """The cached tokenizer folder (trained on first use: about a minute)."""
    from natscale.agent.scripted.assets import write_tokenizer

    key = hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_root() / f"llama32k_{key}"
    model = root / "tokenizer.model"
    if not model.is_file():
        say(f"llama_tokenizer: training a {VOCAB_SIZE}-piece BPE into {root} (about a minute)")
        proto = train(corpus())
        root.mkdir(parents=True, exist_ok=True)
        tmp = model.with_suffix(".tmp")
        tmp.write_bytes(proto)
        tmp.replace(model)
    folder = root / "tokenizer-chat"
    if not (folder / "tokenizer.json").is_file():
        with tempfile.TemporaryDirectory(dir=root, prefix=".tokenizer.") as tmp:
            out = write_tokenizer(model.read_bytes(), Path(tmp) / "tok")
            config_path = out / "tokenizer_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["chat_template"] = LLAMA2_CHAT_TEMPLATE
            config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)
            out.replace(folder)
    return folder


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())

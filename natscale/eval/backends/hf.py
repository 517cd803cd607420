"""``hf``: local transformers generation, batched across episodes.

The prompts of all active episodes are left-padded into one batch and generated together with
the KV cache; each row stops at the end of the assistant turn (the template's end-of-turn token,
the tokenizer's EOS, or a stop string: the end-of-turn text when it is not one token, and
``"\\nObservation:"``). Greedy by default; sampling uses ``torch.manual_seed`` before each batch,
so a run is reproducible for the same batch size and question order.
"""

from __future__ import annotations

import os
from pathlib import Path

from natscale.checkpoint.layout import model_folder_hint
from natscale.config.eval import HFConfig, LoopConfig, SamplingConfig
from natscale.eval.backends import OBSERVATION_STOP, Generation, Request, cut_at_stops
from natscale.eval.errors import EvalError
from natscale.eval.prompting import Prompter
from natscale.model.load import damaged_weights

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def check_model_dir(path: str) -> None:
    root = Path(path)
    if not root.is_dir():
        raise EvalError(
            f"model directory {path!r} not found (give the trainer's export or the output of "
            "`natscale convert zero-to-hf`)"
        )
    if not (root / "config.json").is_file():
        raise EvalError(
            f"{path}: no config.json; not a Hugging Face model directory{model_folder_hint(root)}"
        )
    if not any(root.glob("*.safetensors")) and not any(root.glob("*.bin")):
        raise EvalError(f"{path}: no weights (*.safetensors) in the model directory")
    if (damage := damaged_weights(root)) is not None:
        raise EvalError(damage)


def resolve_device(spec: str):
    import torch

    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


class HFBackend:
    name = "hf"

    def __init__(
        self,
        model_dir: str,
        prompter: Prompter,
        hf: HFConfig,
        loop: LoopConfig,
        sampling: SamplingConfig,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from natscale.model.hf_config import CONFIG_ERRORS, StrictDataclassError, config_problem

        check_model_dir(model_dir)
        self.device = resolve_device(hf.device)
        dtype = "auto" if hf.dtype == "auto" else getattr(torch, _DTYPES[hf.dtype])
        try:
            self.model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=dtype, local_files_only=True
            )
        except (OSError, *CONFIG_ERRORS) as exc:
            where = (
                Path(model_dir) / "config.json"
                if isinstance(exc, StrictDataclassError)
                else model_dir
            )
            raise EvalError(f"{where}: cannot load the model: {config_problem(exc)}") from None
        self.model.to(self.device).eval()
        self.prompter, self.loop, self.sampling = prompter, loop, sampling
        self.batch_size = hf.batch_size
        tok = prompter.tokenizer
        vocab = self.model.get_input_embeddings().weight.shape[0]
        if len(tok) > vocab:
            raise EvalError(
                f"the tokenizer has {len(tok)} tokens but the model's embeddings only {vocab}: "
                "they do not belong together (check prompt.tokenizer / --data)"
            )
        limit = getattr(self.model.config, "max_position_embeddings", None) or 4096
        self.max_context = loop.max_context or int(limit)
        eot = prompter.end_of_turn
        self.eos_ids: list[int] = []
        eot_id = tok.convert_tokens_to_ids(eot) if eot else None
        eot_is_token = eot_id is not None and eot_id != tok.unk_token_id
        if eot_is_token:
            self.eos_ids.append(int(eot_id))
        if tok.eos_token_id is not None and tok.eos_token_id not in self.eos_ids:
            self.eos_ids.append(int(tok.eos_token_id))
        self.react = loop.protocol == "react"
        self.stops = ([OBSERVATION_STOP] if self.react else []) + (
            [eot] if eot and not eot_is_token else []
        )
        pad = tok.pad_token_id if tok.pad_token_id is not None else (self.eos_ids or [0])[0]
        self.pad_id = int(pad)
        self.tokenizer = tok

    def check(self, question_ids: list[str]) -> None:
        pass

    def generate(self, requests: list[Request]) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(requests), self.batch_size):
            out += self._batch(requests[start : start + self.batch_size])
        return out

    def _batch(self, requests: list[Request]) -> list[Generation]:
        prompts = [self.prompter.ids(r.messages) for r in requests]
        results: list[Generation | None] = [None] * len(requests)
        rows = []
        for i, ids in enumerate(prompts):
            if len(ids) + 1 > self.max_context:
                results[i] = Generation("", 0, overflow=True)
            else:
                rows.append(i)
        # Each row gets the tokens its own context has room for, whatever it is batched with:
        # rows with less room than loop.max_new_tokens (near loop.max_context) go in their own
        # generate call, so that a long prompt never cuts a short one.
        groups: dict[int, list[int]] = {}
        for i in rows:
            room = min(self.loop.max_new_tokens, self.max_context - len(prompts[i]))
            groups.setdefault(room, []).append(i)
        for max_new, group in sorted(groups.items(), reverse=True):
            generations = self._generate(prompts, group, requests, max_new)
            for i, generation in zip(group, generations, strict=True):
                results[i] = generation
        return [r for r in results if r is not None]

    def _generate(
        self, prompts: list[list[int]], rows: list[int], requests: list[Request], max_new: int
    ) -> list[Generation]:
        import torch

        longest = max(len(prompts[i]) for i in rows)
        batch = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for j, i in enumerate(rows):
            ids = prompts[i]
            batch[j, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[j, longest - len(ids) :] = 1
        kwargs = {
            "max_new_tokens": max_new,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids or None,
            "use_cache": True,
        }
        if self.stops:
            kwargs.update(stop_strings=self.stops, tokenizer=self.tokenizer)
        if self.sampling.temperature > 0:
            torch.manual_seed(requests[rows[0]].seed)
            kwargs.update(
                do_sample=True, temperature=self.sampling.temperature, top_p=self.sampling.top_p
            )
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            gen = self.model.generate(
                input_ids=batch.to(self.device), attention_mask=mask.to(self.device), **kwargs
            )
        new = gen[:, longest:].tolist()
        return [self._decode(new[j], max_new) for j in range(len(rows))]

    def _decode(self, ids: list[int], max_new: int) -> Generation:
        n = len(ids)
        stopped = False
        for k, t in enumerate(ids):
            if t in self.eos_ids:
                n, stopped = k + 1, True
                break
        if not stopped:  # rows finished by a stop string are padded after it
            while n > 0 and ids[n - 1] == self.pad_id and self.pad_id not in self.eos_ids:
                n -= 1
        if self.react:
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
        else:  # a tool call may be written with special tokens: keep them, but not the end
            text = self.tokenizer.decode(ids[: n - stopped], skip_special_tokens=False)
        hit_stop = stopped or any(s in text for s in self.stops) or n < len(ids)
        overflow = not hit_stop and max_new < self.loop.max_new_tokens
        return Generation(
            cut_at_stops(text, self.stops),
            n,
            overflow=overflow,
            truncated=not (hit_stop or overflow),
        )

    def close(self) -> None:
        pass

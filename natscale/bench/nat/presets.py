"""The protocol of ``natscale bench nat`` as data: task pool, model, training and evaluation.

docs/nat-benchmark.md states the protocol and why each number is what it is; the presets here are
its machine-readable form and every run's record carries the one it used. ``cpu`` is the full
protocol sized for a 2-core machine (24 runs, within 90 minutes); ``cpu-warm``,
``cpu-systematic``, ``cpu-systematic-long`` and ``cpu-scarce`` are its follow-ups from a base
model, and ``cpu-scarce-tools`` is ``cpu-scarce`` with an agent that calls its tools natively;
``gpu`` is the same protocol with a bigger model and more steps for one H100; ``quick`` is a smoke
test of the whole pipeline (93-111 s on a loaded 2-core machine; its accuracies mean nothing),
``quick-tools`` the same with native tool calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

STRATEGIES = ("vanilla", "nut", "nat", "nat-fine")

# nat-fine: one bucket per failure kind of the task's episodes, best first (the generator labels
# each trajectory's kind; the score below orders them by how far the episode got). The wording
# follows the paper's binary markers: "...solve the problem correctly." / "But ...".
FINE_KINDS = ("success", "wrong_answer", "bad_tool_args", "unfinished")
FINE_SCORES = {"success": 1.0, "wrong_answer": 0.5, "bad_tool_args": 0.25, "unfinished": 0.0}
FINE_MARKERS = {
    "success": "Generate a sequence of Thought and Action steps to solve the problem correctly.",
    "wrong_answer": "Generate a sequence of Thought and Action steps. But finish with a wrong answer.",
    "bad_tool_args": "Generate a sequence of Thought and Action steps. But write expressions the "
    "calculator cannot read.",
    "unfinished": "Generate a sequence of Thought and Action steps. But never finish the problem.",
}

# The paper's instruction turn is ~80 tokens of constant, untrained text in every example; the
# benchmark keeps the turn (and the acknowledgement, and the paper's marker wording) but words it
# in one line, which halves what a small model spends on each example.
SHORT_INSTRUCTION = (
    "Solve a math problem with Thought and Action steps. "
    "Action is calculate[expression] or finish[answer]."
)

# the instruction of a tool-calling agent (protocol tool_calls): the calls are native, so the
# instruction names no action syntax; the markers keep the paper's wording
TOOLS_INSTRUCTION = (
    "Solve a math problem step by step. Call calculate for arithmetic and finish with the answer."
)

# the small Llama of the benchmark: the bundled tokenizer's vocabulary, random init
_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "mlp_bias": False,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "tie_word_embeddings": False,
    "use_cache": False,
    "max_position_embeddings": 2048,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
    "vocab_size": 2048,
    "pretraining_tp": 1,
}


def llama_config(hidden: int, layers: int, heads: int) -> dict[str, Any]:
    """A Llama config of ``hidden`` width, ``layers`` blocks and ``heads`` heads (MLP 3x wide)."""
    return {
        **_LLAMA,
        "hidden_size": hidden,
        "intermediate_size": 3 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": hidden // heads,
    }


@dataclass(frozen=True)
class Preset:
    """One sizing of the protocol. Every run of a comparison uses the same preset."""

    name: str
    # task: the bundled synthetic math ReAct generator (natscale.agent.scripted)
    pool_seed: int = 20240218
    pool_questions: int = 6000  # training questions; their trajectories form the pools
    test_questions: int = 500  # held out: drawn with their own seed, none is a training question
    max_steps: int = 1  # difficulty: calculator steps of the gold solution, at most
    # the teacher's failures: "varied" (random slips of several modes per kind) or "systematic"
    # (one mode per kind, the same on every problem: a behaviour a model can learn)
    failures: str = "varied"
    instruction: str = SHORT_INSTRUCTION
    positives: tuple[int, ...] = (500, 2000)  # P: positives kept (the scarce settings)
    negatives_per_positive: int = 2  # the negative pool is this many x P failures
    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    # model: a small Llama from random init with the bundled tokenizer
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    # training: identical for every strategy (same steps, so the same compute)
    steps: int = 450
    micro_batch_rows: int = 2
    grad_accum: int = 1
    max_seq_len: int = 1024
    lr: float = 3e-3
    warmup_steps: int = 10
    precision: str = "fp32"
    # start: random init (base_steps 0: the protocol as first written), or a base model that has
    # the task's skill already: vanilla trained base_steps steps (lr 3e-3, like the calibration) on
    # the pool's successes that no P subset holds; every comparison run then starts from it
    base_steps: int = 0
    base_lr: float = 3e-3
    # the question prompt of the base model's data: "plain" (the baseline's ``Question: ...``),
    # or "both": every other success with NAT's success prompt, so that the base knows the prompt
    # of every strategy's evaluation (the baselines' plain one and NAT's success marker)
    base_prompt: str = "plain"
    # the first pool success (in generation order) of the base model's data; 0: the one after the
    # largest P's. A preset with smaller P sets it to keep the base model of one with larger P.
    base_from: int = 0
    # what ``--calibrate`` runs: "all" (vanilla on every success of the pool, from random init:
    # the protocol as first written) or "positives" (the base model, then vanilla at each P: the
    # comparison's own vanilla runs, which the comparison then reuses)
    calibration: str = "all"
    # the agent: "react" (the paper's Thought/Action text) or "tool_calls" (the same
    # trajectories as native tool calls: prepare's native_tools, eval's loop.protocol)
    protocol: str = "react"
    # evaluation: greedy, the paper's loop; NAT models also with the failure marker
    max_depth: int = 6
    max_new_tokens: int = 48
    eval_batch: int = 128
    controllability: tuple[str, ...] = ("nat", "nat-fine")
    # execution: runs in parallel, threads per run (2 cores: two one-thread runs beat one
    # two-thread run for a model this small)
    jobs: int = 2
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def model_config(self) -> dict[str, Any]:
        return llama_config(self.hidden, self.layers, self.heads)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CPU = Preset(name="cpu")
# Not yet run on a GPU: sized from the CPU runs (see docs/nat-benchmark.md), four runs share
# the GPU because one small model leaves most of it idle.
GPU = replace(
    CPU,
    name="gpu",
    hidden=384,
    layers=6,
    heads=6,
    steps=800,
    micro_batch_rows=4,
    lr=1e-3,
    precision="bf16",
    eval_batch=250,
    jobs=4,
    threads=4,
)
QUICK = replace(
    CPU,
    name="quick",
    pool_questions=120,
    test_questions=8,
    positives=(24,),
    seeds=(0,),
    hidden=32,
    layers=1,
    heads=2,
    steps=3,
    micro_batch_rows=1,
    warmup_steps=1,
    max_seq_len=512,
    max_depth=1,
    max_new_tokens=16,
    eval_batch=8,
    controllability=("nat",),
)
# The follow-up the first comparison asked for (docs/nat-benchmark.md, change log): the same
# comparison from a base model that can already copy numbers, so that what each strategy adds to
# a capable model is measured, as in the paper (which fine-tunes Llama-2-7B-chat).
CPU_WARM = replace(CPU, name="cpu-warm", base_steps=500, steps=150, lr=1e-3)
# The follow-up cpu-warm asked for (change 3): failures a model can learn as behaviours (one mode
# per kind), and a base model that knows both evaluation prompts, so that neither the baselines'
# nor NAT's prompt is new to it.
CPU_SYSTEMATIC = replace(CPU_WARM, name="cpu-systematic", failures="systematic", base_prompt="both")
# cpu-systematic fine-tuned three times as long (change 4): in 150 steps no model had learned what
# its markers mean (a failure marker changed nothing), so the comparison did not test them.
CPU_SYSTEMATIC_LONG = replace(CPU_SYSTEMATIC, name="cpu-systematic-long", steps=450)
# cpu-systematic-long with scarcer successes (change 5): at P = 500 and 2,000 vanilla reached
# 94-97% and left nothing for the failures to add; at P = 100 and 300 (the same base model, so
# base_from the 2,001st success) vanilla is calibrated first, from its own runs.
CPU_SCARCE = replace(
    CPU_SYSTEMATIC_LONG,
    name="cpu-scarce",
    positives=(100, 300),
    base_from=2000,
    calibration="positives",
)
# cpu-scarce with a tool-calling agent (change 6): the same trajectories as native tool calls
# (tool schemas in the prompt, JSON calls, tool results), so that whether NAT helps is measured on
# a second agent format. A call turn is ~2.7x the tokens of its ReAct step (68 vs 25 on average,
# at most 82): room for 96 new tokens a turn.
CPU_SCARCE_TOOLS = replace(
    CPU_SCARCE,
    name="cpu-scarce-tools",
    protocol="tool_calls",
    instruction=TOOLS_INSTRUCTION,
    max_new_tokens=96,
)
# the tool schemas in the prompt are ~475 tokens with the bundled tokenizer (JSON's braces and
# quotes are byte tokens in its 2,048-word vocabulary): a row holds one example
QUICK_TOOLS = replace(
    QUICK,
    name="quick-tools",
    protocol="tool_calls",
    instruction=TOOLS_INSTRUCTION,
    max_new_tokens=24,
    max_seq_len=1024,
)
PRESETS = {
    p.name: p
    for p in (
        CPU,
        CPU_WARM,
        CPU_SYSTEMATIC,
        CPU_SYSTEMATIC_LONG,
        CPU_SCARCE,
        CPU_SCARCE_TOOLS,
        GPU,
        QUICK,
        QUICK_TOOLS,
    )
}


def variant(
    preset: Preset,
    *,
    seeds: tuple[int, ...] | None = None,
    positives: tuple[int, ...] | None = None,
) -> Preset:
    """``preset`` with other seeds and/or P values, named for them (``cpu-scarce-seeds345-p300``):
    a replication of a comparison. The base model, if the preset has one, is trained with the
    first seed, so new seeds give a new base model too. Raises ValueError on bad values."""
    name = preset.name
    if seeds:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds {list(seeds)}: give distinct whole numbers >= 0")
        # One digit a seed (seeds345) or, once one has two digits, a dash before each: seeds-12 is
        # the seed 12 and seeds12 the seeds 1 and 2, so the two never share a folder.
        if max(seeds) < 10:
            name += "-seeds" + "".join(map(str, seeds))
        else:
            name += "-seeds" + "".join(f"-{seed}" for seed in seeds)
    if positives:
        if len(set(positives)) != len(positives) or min(positives) < 1:
            raise ValueError(f"positives {list(positives)}: give distinct whole numbers >= 1")
        if preset.base_steps and preset.base_from and max(positives) > preset.base_from:
            raise ValueError(
                f"positives {list(positives)}: preset {preset.name!r} trains its base model on the "
                f"successes after the {preset.base_from}th, so P can be at most {preset.base_from}"
            )
        name += "-p" + "-".join(map(str, positives))
    return replace(
        preset,
        name=name,
        seeds=tuple(seeds or preset.seeds),
        positives=tuple(positives or preset.positives),
    )

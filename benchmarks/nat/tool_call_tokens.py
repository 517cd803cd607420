"""What native tool calls cost in tokens with the bundled tokenizer (docs/nat-benchmark.md,
change 6): an agent turn as ReAct text and as a tool call, and the tool schemas in the prompt.

    python benchmarks/nat/tool_call_tokens.py

The turns are the cpu-scarce pool's first 300 trajectories (the terse, systematic teacher), each
assistant turn as ReAct text and as the ``<tool_call>`` JSON a chat template without tool
support writes (natscale's built-in ones); the prompt is the tool schemas' system text. Prints
two lines; writes nothing.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from natscale.agent.scripted.dataset import generate  # noqa: E402
from natscale.agent.tool_calls import BUILTIN_SCHEMAS  # noqa: E402
from natscale.data.formats.writing import Notes, tool_calls_text  # noqa: E402
from natscale.data.react_calls import offered_tools, tool_call_turns  # noqa: E402
from natscale.data.render import load_tokenizer  # noqa: E402
from natscale.data.render.tools import TOOLS_FOOTER, TOOLS_HEADER, tools_system_text  # noqa: E402
from natscale.data.trajectory import Trajectory, Turn  # noqa: E402


def main() -> int:
    tok = load_tokenizer(REPO / "examples" / "tokenizer")

    def tokens(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    pool = generate(20240218, 300, 10, verbosity=0, max_steps=1, failures="systematic")
    react, calls = [], []
    for traj in pool.trajectories[:300]:
        turns = [
            Turn("assistant" if c["role"] == "assistant" else "observation", c["content"])
            for c in traj["conversations"]
        ]
        react += [tokens(t.content) for t in turns if t.role == "assistant"]
        native, _ = tool_call_turns(Trajectory("t", "q", turns), Notes())
        calls += [tokens(tool_calls_text(t)) for t in native if t.role == "assistant"]
    print(
        f"assistant turn, tokens: ReAct mean {statistics.mean(react):.1f} max {max(react)}; "
        f"tool call mean {statistics.mean(calls):.1f} max {max(calls)}"
    )
    schemas = {k: tokens(json.dumps(v["function"])) for k, v in BUILTIN_SCHEMAS.items()}
    print(
        f"tool schemas in the prompt (calculate, finish): "
        f"{tokens(tools_system_text(offered_tools(['calculate'])))} tokens; header "
        f"{tokens(TOOLS_HEADER)}, footer {tokens(TOOLS_FOOTER)}, each schema {schemas}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

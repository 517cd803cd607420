"""``scripted``: replay the assistant turns of recorded trajectories (the example teacher).

Sample ``s`` of question ``q`` replays the ``s``-th trajectory with id ``q`` in the given NAT
release files (cycling when there are fewer), turn by turn; the observations come from the real
tools of the loop, so a replay of the bundled data must reproduce its conversations and rewards.
Files in the OpenAI chat form (``messages``) replay with native tool calls: each assistant
message is written as natscale's templates write it, its calls as ``<tool_call>`` JSON blocks.
"""

from __future__ import annotations

from collections import defaultdict

from natscale.data.errors import DataError
from natscale.data.formats import nat_release, openai
from natscale.data.formats.common import field
from natscale.data.formats.reader import expand_paths, iter_records
from natscale.data.formats.writing import tool_calls_text
from natscale.eval.backends import Generation, Request
from natscale.eval.errors import EvalError


class ScriptedBackend:
    name = "scripted"

    def __init__(self, paths: list[str]) -> None:
        self.turns: dict[str, list[list[str]]] = defaultdict(list)
        try:
            for path in expand_paths(paths):
                for rec in iter_records(path):
                    tid = str(field(rec, rec.data, "id", (str, int)))
                    if "messages" in rec.data:  # OpenAI chat form: calls as <tool_call> text
                        turns = openai.parse_messages(rec, rec.data["messages"], "messages")
                        texts = [tool_calls_text(t) for t in turns if t.role == "assistant"]
                    else:
                        convs = field(rec, rec.data, "conversations", list)
                        turns = [nat_release._turn(rec, m, i) for i, m in enumerate(convs)]
                        texts = [t.content for t in turns if t.role == "assistant"]
                    self.turns[tid].append(texts)
        except (DataError, FileNotFoundError) as exc:
            raise EvalError(f"scripted.trajectories: {exc}") from None

    def check(self, question_ids: list[str]) -> None:
        missing = [q for q in question_ids if q not in self.turns]
        if missing:
            raise EvalError(
                f"scripted.trajectories has no trajectory for {len(missing)} question(s), "
                f"e.g. {missing[:3]}"
            )

    def generate(self, requests: list[Request]) -> list[Generation]:
        out = []
        for r in requests:
            script = self.turns[r.qid]
            steps = script[r.sample % len(script)]
            text = steps[r.turn] if r.turn < len(steps) else ""
            out.append(Generation(text, len(text.split())))
        return out

    def close(self) -> None:
        pass

"""Regenerate the bundled example data, tokenizer and tiny model configs, deterministically.

    python examples/generate.py                 # rewrite examples/ in place (the committed files)
    python examples/generate.py --out /tmp/ex   # somewhere else
    python examples/generate.py --no-tokenizer  # data files only (no sentencepiece/transformers)

The same seed gives byte-identical data files (tests/agent/test_scripted_dataset.py checks the committed
ones). The library code is natscale/agent/scripted/; this script only wires it up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout too

from natscale.agent.scripted.dataset import (
    DEFAULT_NUM_QUESTIONS,
    DEFAULT_SEED,
    generate,
    kind_counts,
    write_dataset,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--num-questions", type=int, default=DEFAULT_NUM_QUESTIONS)
    parser.add_argument(
        "--tokenizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the tokenizer and write the tiny model configs (default: yes)",
    )
    args = parser.parse_args(argv)

    data = generate(seed=args.seed, num_questions=args.num_questions)
    written = write_dataset(data, args.out / "math_react")
    if args.tokenizer:
        from natscale.agent.scripted.assets import (
            corpus_texts,
            train_sentencepiece,
            write_model_configs,
            write_tokenizer,
        )

        tokenizer_dir = write_tokenizer(
            train_sentencepiece(corpus_texts(data)), args.out / "tokenizer"
        )
        written += sorted(tokenizer_dir.iterdir())
        written += write_model_configs(tokenizer_dir, args.out / "models")
    for path in written:
        print(f"  {path}")
    counts = ", ".join(f"{k} {v}" for k, v in kind_counts(data.trajectories).items())
    print(
        f"wrote {len(written)} files to {args.out}: {len(data.questions)} questions, "
        f"{len(data.trajectories)} trajectories ({counts}), "
        f"{len(data.test_questions)} held-out test questions"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

import pytest
from pydantic import ValidationError

from natscale.config.prepare import Bucket, StrategyConfig
from natscale.data.errors import DataError
from natscale.data.nat import assign_class, inference_messages, question_template, select
from natscale.data.prompts import TaskPrompt
from natscale.data.trajectory import Outcome, Trajectory, Turn

PAPER_POS = (
    "Question: Q?. Generate a sequence of Thought and Action steps to solve the problem correctly."
)
PAPER_NEG = "Question: Q?. Generate a sequence of Thought and Action steps. But incorrectly solve the problem."


def _t(i: int, success: bool | None, score: float | None = None, task: str = "") -> Trajectory:
    return Trajectory(
        id=f"t{i}",
        question="Q?",
        turns=[Turn("assistant", "a")],
        task=task,
        outcome=Outcome(success=success, score=score),
    )


def _queries(strategy: StrategyConfig, trajs, prompts=None):
    examples, _ = select(trajs, strategy, prompts=prompts)
    return [(e.traj.id, e.cls, e.query) for e in examples]


def test_vanilla_nut_nat_classes_and_paper_wording():
    trajs = [_t(0, True), _t(1, False)]
    assert _queries(StrategyConfig(name="vanilla"), trajs) == [("t0", 0, "Question: Q?")]
    assert _queries(StrategyConfig(name="nut"), trajs) == [
        ("t0", 0, "Question: Q?"),
        ("t1", 1, "Question: Q?"),
    ]
    assert _queries(StrategyConfig(name="nat"), trajs) == [
        ("t0", 0, PAPER_POS),
        ("t1", 1, PAPER_NEG),
    ]


def test_nat_prefix_markers_templates_and_prompt_file():
    trajs = [_t(0, True), _t(1, False)]
    prefix = StrategyConfig(position="prefix", markers=["[Good]", "[Bad]"])
    assert [q for *_, q in _queries(prefix, trajs)] == [
        "[Good] Question: Q?.",
        "[Bad] Question: Q?.",
    ]
    suffix = StrategyConfig(markers=["[Good]", "[Bad]"])
    assert [q for *_, q in _queries(suffix, trajs)] == [
        "Question: Q?. [Good]",
        "Question: Q?. [Bad]",
    ]
    full = StrategyConfig(templates=["{question} :)", "{question} :("])
    assert [q for *_, q in _queries(full, trajs)] == ["Q? :)", "Q? :("]
    # the task prompt file's templates are the default wording for its task
    prompt = TaskPrompt(
        task="m", templates={"success": "OK {question}", "failure": "KO {question}"}
    )
    trajs = [_t(0, True, task="m"), _t(1, False, task="m"), _t(2, False, task="other")]
    assert [q for *_, q in _queries(StrategyConfig(), trajs, {"m": prompt})] == [
        "OK Q?",
        "KO Q?",
        PAPER_NEG,
    ]
    # questions with braces are not format strings
    assert (
        question_template(0, StrategyConfig())
        .replace("{question}", "{x}")
        .startswith("Question: {x}.")
    )


@pytest.mark.parametrize(
    ("score", "bucket"),
    [(1.0, 0), (0.99, 1), (0.4, 1), (0.39, 2), (0.01, 2), (0.0, 3)],
)
def test_nat_fine_paper_buckets(score, bucket):
    strategy = StrategyConfig(name="nat-fine")
    assert strategy.class_names() == [
        "correct",
        "mostly_correct",
        "mostly_incorrect",
        "totally_incorrect",
    ]
    t = _t(0, score == 1.0, score)
    assert assign_class(t, strategy) == bucket
    marker = ["[Correct]", "[Mostly Correct]", "[Mostly Incorrect]", "[Totally Incorrect]"][bucket]
    assert _queries(strategy, [t])[0][2] == f"{marker} Question: Q?."


def test_nat_fines_correct_bucket_never_holds_a_known_failure():
    """F1 reads "1,080" as 1080 (score 1) where the exact-match rule failed it: 38 failures of the
    bundled math data were trained with [Correct], the marker inference uses."""
    strategy = StrategyConfig(name="nat-fine")
    assert assign_class(_t(0, False, 1.0), strategy) == 1  # [Mostly Correct]
    assert assign_class(_t(0, True, 0.5), strategy) == 1  # a success goes by its score
    assert assign_class(_t(0, None, 1.0), strategy) == 0  # scores alone: the paper's F1 rule
    assert assign_class(_t(0, False, 0.0), strategy) == 3


def test_nat_fine_custom_buckets_and_missing_score():
    strategy = StrategyConfig(
        name="nat-fine",
        buckets=[Bucket(name="hi", marker="[hi]", min=0.5), Bucket(name="lo", marker="[lo]")],
        position="suffix",
    )
    assert _queries(strategy, [_t(0, False, 0.7)])[0][1:] == (0, "Question: Q?. [hi]")
    with pytest.raises(DataError, match="no score") as exc:
        assign_class(_t(0, True), strategy)
    assert exc.value.reason == "no_score"


def test_seeded_sampling_per_class_and_weights():
    trajs = [_t(i, i % 3 == 0) for i in range(300)]  # 100 positives, 200 negatives
    strategy = StrategyConfig(counts={"success": 20, "failure": 50}, weights={"failure": 0.5})
    a, report = select(trajs, strategy, seed=1)
    b, _ = select(trajs, strategy, seed=1)
    c, _ = select(trajs, strategy, seed=2)
    ids = [e.traj.id for e in a]
    assert ids == [e.traj.id for e in b] and ids != [e.traj.id for e in c]
    assert sum(e.cls == 0 for e in a) == 20 and sum(e.cls == 1 for e in a) == 50
    assert {e.weight for e in a if e.cls == 1} == {0.5} and {e.weight for e in a if e.cls == 0} == {
        1.0
    }
    assert report["failure"] == {"available": 200, "requested": 50, "kept": 50}
    first, _ = select(trajs, strategy.model_copy(update={"sample": "first"}))
    # all but one, and more than there are
    _, report = select(trajs, StrategyConfig(counts={"success": 99, "failure": 201}), seed=1)
    assert report["success"]["kept"] == 99 and report["failure"]["kept"] == 200
    assert [e.traj.id for e in first if e.cls == 0] == [f"t{i}" for i in range(0, 60, 3)]


def test_config_validation():
    with pytest.raises(ValidationError, match="unknown class"):
        StrategyConfig(counts={"positive": 3})
    with pytest.raises(ValidationError, match="need 2 entries"):
        StrategyConfig(markers=["only one"])
    with pytest.raises(ValidationError, match="catch-all"):
        StrategyConfig(name="nat-fine", buckets=[Bucket(name="a", marker="a", min=0.1)])
    with pytest.raises(ValidationError, match=r"no \{question\}"):
        StrategyConfig(templates=["a", "b"])


def test_inference_prompt_uses_the_success_marker():
    prompt = TaskPrompt(instruction="Solve.", acknowledgement="Sure.")
    msgs = inference_messages("Q?", StrategyConfig(), prompt)
    assert [(m.role, m.content, m.train) for m in msgs] == [
        ("user", "Solve.", False),
        ("assistant", "Sure.", False),
        ("user", PAPER_POS, False),
    ]
    fine = inference_messages("Q?", StrategyConfig(name="nat-fine"))
    assert fine[-1].content == "[Correct] Question: Q?."
    prepend = inference_messages(
        "Q?", StrategyConfig(name="vanilla"), prompt, instruction_mode="prepend"
    )
    assert [(m.role, m.content) for m in prepend] == [("user", "Solve.\n\nQuestion: Q?")]


@pytest.mark.parametrize(
    "fields",
    [
        {"weights": {"failure": -1.0}},  # gradient ascent on the failures
        {"weights": {"failure": float("nan")}},
        {"weights": {"failure": float("inf")}},
        {"counts": {"success": -5}},  # `sample: first` kept all but the last 5
    ],
)
def test_negative_or_non_finite_weights_and_counts_are_refused(fields):
    with pytest.raises(ValidationError, match=r"(greater than or equal to 0|finite number)"):
        StrategyConfig(**fields)

import json

import pytest

from natscale.agent.scoring import (
    Score,
    exact_match,
    f1_score,
    math_reward,
    score_answer,
    yes_no,
)
from natscale.agent.tools import (
    BM25Search,
    Tool,
    ToolConfigError,
    build_tools,
    call_tool,
    close_tools,
    load_corpus,
)


def _corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    docs = [
        {
            "title": "Arthur's Magazine",
            "text": "Arthur's Magazine (1844-1846) was an American literary periodical.",
        },
        {
            "title": "First for Women",
            "text": "First for Women is a woman's magazine started in 1989.",
        },
        {"title": "Eiffel Tower", "text": "The Eiffel Tower is a lattice tower in Paris."},
        {"title": "Apples", "text": "An apple is a round fruit."},
    ]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_search_returns_the_papers_top3_snippets(tmp_path):
    search = BM25Search(load_corpus(_corpus(tmp_path)))
    out = search("Arthur's Magazine")
    assert out.startswith("#1: Arthur's Magazine: Arthur's Magazine (1844-1846)")
    assert "#2: First for Women" in out and "#4" not in out
    assert search("Eiffel Paris").startswith("#1: Eiffel Tower")
    assert search("zebra").startswith("Could not find")


def test_corpus_not_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"title": "a", "text": "b"}\nnot json\n')
    with pytest.raises(ToolConfigError, match=r"c.jsonl:2: not JSONL"):
        load_corpus(bad)
    with pytest.raises(ToolConfigError, match="not found"):
        load_corpus(tmp_path / "missing.jsonl")


def test_registry_unknown_tool_and_user_tool(tmp_path):
    with pytest.raises(ToolConfigError, match="unknown tool 'browse'"):
        build_tools(["calculate", "browse"])
    with pytest.raises(ToolConfigError, match="needs a corpus"):
        build_tools(["search"])
    tools = build_tools(["calculate", "upper"], user_tools={"upper": "string:capwords"})
    assert set(tools) == {"calculate", "finish", "upper"}
    assert call_tool(tools["upper"], "hello world") == "Hello World"
    assert call_tool(tools["calculate"], "2 * 21") == "42"
    close_tools(tools)
    with pytest.raises(ToolConfigError, match="no function"):
        build_tools([], user_tools={"x": "string:nope"})


def test_tool_errors_become_observations():
    def boom(arg):
        raise RuntimeError("bad " + arg)

    assert call_tool(Tool("b", boom), "x") == "Error: RuntimeError: bad x"
    # user tools' time limits: tests/agent/test_tool_worker.py


def test_scoring_rules():
    assert score_answer("math", "18", "so #### 18").correct
    assert not score_answer("math", "18.0", "#### 18").correct
    assert score_answer("math", "1234", "#### 1,234").correct
    qa = score_answer("qa", "the Roman Catholic church", "Roman Catholic")
    assert not qa.correct and qa.f1 == pytest.approx(0.8)
    assert exact_match("Nevada.", "nevada") and f1_score(None, "x") == 0.0
    assert (
        score_answer("yesno", "Yes", True).correct and score_answer("yesno", "no", "False").correct
    )
    assert not score_answer("yesno", "Unclear", True).correct and yes_no("maybe") is None
    # math: surrounding spaces of the finish[...] argument are ignored, nothing else is
    assert score_answer("math", " 18 ", "#### 18").correct
    assert not score_answer("math", "$18", "#### 18").correct
    # yes/no answers on either side score F1 by exact match only, no partial token credit
    assert f1_score("yes it is", "yes") == 0.0 and f1_score("maybe yes", "yes") == 0.0
    assert f1_score("no", "False") == 1.0 and f1_score("yes", "true") == 1.0
    # a boolean gold matches its own literal too: "True" for True (it scored EM 0, F1 0)
    assert score_answer("qa", "True", True) == Score(True, 1.0)
    assert score_answer("qa", "false", False) == Score(True, 1.0)
    assert score_answer("qa", "yes", True) == Score(True, 1.0)
    assert score_answer("qa", "no", True) == Score(False, 0.0)
    assert score_answer("qa", "True", False) == Score(False, 0.0)
    assert f1_score("maybe yes", "maybe") == pytest.approx(2 / 3)  # no yes/no gold: token F1
    # only a whole answer of yes/no is matched exactly: "No Doubt" (a band) is a name
    assert f1_score("No Doubt band", "No Doubt") == pytest.approx(0.8)
    assert f1_score("yes, Paris", "Paris") == pytest.approx(2 / 3)
    # GSM8K golds with or without a space after ####, the same in both readers
    assert score_answer("math", "18", "a ####18").correct and math_reward("18", "a ####18")
    # a gold that is not a boolean matches nothing, not even an unparseable prediction
    assert not score_answer("yesno", "Unclear", "unknown").correct

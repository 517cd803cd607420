from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from natscale.config.loader import ConfigError, load_config, save_config


class Train(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = 1e-5
    schedule: Literal["cosine", "linear"] = "cosine"


class Run(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: Train = Train()


def test_overrides_and_roundtrip(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  lr: 3.0e-4\n")
    run = load_config(cfg, Run, ["train.schedule=linear", "train.lr=2e-5"])
    assert run.train.lr == 2e-5 and run.train.schedule == "linear"
    save_config(run, tmp_path / "out" / "resolved.yaml")
    assert load_config(tmp_path / "out" / "resolved.yaml", Run) == run


def test_errors_name_key_and_allowed_values(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  schedule: step\n  lrr: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, Run)
    msg = str(exc.value)
    assert str(cfg) in msg and "train.schedule" in msg and "'cosine'" in msg
    assert "train.lrr: unknown key" in msg
    # a bad value from --set says so, a bad value from the file does not
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, Run, ["train.lr=fast"])
    lines = str(exc.value).splitlines()
    assert any(ln.startswith("  - train.lr:") and "given with --set" in ln for ln in lines)
    assert any(ln.startswith("  - train.schedule:") and "--set" not in ln for ln in lines)


@pytest.mark.parametrize(
    ("text", "needle"), [("a: [", "not valid YAML"), ("- 1\n- 2\n", "top level must be a mapping")]
)
def test_bad_files(tmp_path, text, needle):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(cfg, Run)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", Run)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train: {}\n")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(cfg, Run, ["novalue"])


def test_dotted_keys_one_implementation():
    """get/set/parse are shared by run configs, DeepSpeed configs, bench specs and data fields."""
    from natscale.config.loader import apply_overrides, get_dotted, parse_override, set_dotted

    data = {"a": {"b": 1}, "s": "text"}
    set_dotted(data, "x.y.z", [1, 2])
    assert get_dotted(data, "x.y.z") == [1, 2] and get_dotted(data, "a.b") == 1
    assert get_dotted(data, "a.missing") is None and get_dotted(data, "s.t") is None
    assert get_dotted(data, None) is None and get_dotted(data, "") is None
    assert parse_override(" train.lr =2.5e-5") == ("train.lr", 2.5e-5)
    assert parse_override("name=") == ("name", "")
    with pytest.raises(ConfigError, match="'s' is not a section"):
        set_dotted(data, "s.t", 1)
    with pytest.raises(ConfigError, match=r"--set 's.t=1': 's' is not a section"):
        apply_overrides(data, ["s.t=1"])
    with pytest.raises(ConfigError, match=r"--set 'train.lr': expected KEY=VALUE"):
        apply_overrides(data, ["train.lr"])


def test_exponent_numbers_are_numbers_in_files_and_overrides(tmp_path):
    """YAML 1.1 reads 5e8 as a string; a DeepSpeed override must get the number."""
    from natscale.config.loader import load_yaml, parse_override

    assert load_yaml("a: 5e8\nb: 2e-5\nc: '5e8'\nd: 1e\n") == {
        "a": 5e8, "b": 2e-5, "c": "5e8", "d": "1e"}  # fmt: skip
    assert parse_override("deepspeed.overrides.zero_optimization.reduce_bucket_size=5e8") == (
        "deepspeed.overrides.zero_optimization.reduce_bucket_size",
        5e8,
    )


def test_a_section_check_names_the_set_value_inside_it(tmp_path):
    from pydantic import model_validator

    class Model(BaseModel):
        path: str | None = None
        config: str | None = None

        @model_validator(mode="after")
        def _one(self):
            if (self.path is None) == (self.config is None):
                raise ValueError("set exactly one of model.path and model.config")
            return self

    class WithModel(BaseModel):
        model: Model

    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  path: m\n")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg, WithModel, ["model.config=c"])
    assert "(with model.config given with --set)" in str(exc.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("train:\n  lr: 1.0e-4\nother: 1\ntrain:\n  schedule: linear\n", 4),
        ("train:\n  lr: 1.0e-4\n  lr: 2.0e-4\n", 3),
        ("train: {lr: 1.0e-4, lr: 2.0e-4}\n", 1),
    ],
)
def test_a_key_given_twice_is_refused(tmp_path, text, line):
    """PyYAML keeps the last of two equal keys: a second section silently replaced the first,
    defaults and all."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=rf"(?s)given twice .*line {line}, column") as exc:
        load_config(cfg, Run)
    assert str(cfg) in str(exc.value)


def test_yaml_merge_keys_and_empty_sections_are_fine(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("base: &b {lr: 1.0e-4}\ntrain:\n  <<: *b\n  schedule: linear\n")

    class WithBase(Run):
        base: dict = {}

    assert load_config(cfg, WithBase).train.lr == 1e-4
    # a section whose keys are all commented out is null in YAML: its defaults, and --set works
    cfg.write_text("train:\n#  lr: 1.0e-4\n")
    assert load_config(cfg, Run) == Run()
    assert load_config(cfg, Run, ["train.schedule=linear"]).train.schedule == "linear"


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plain: str = "{question}"


class WithPrompt(BaseModel):
    prompt: Prompt = Prompt()


@pytest.mark.parametrize(("value", "kind"), [("Q: {question}", "a mapping"), ("[x]", "a list")])
def test_a_set_text_that_yaml_reads_as_structure_says_to_quote_it(tmp_path, value, kind):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("prompt: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg, WithPrompt, [f"prompt.plain={value}"])
    assert f"--set read it as YAML, which made it {kind}: quote the text" in str(info.value)
    assert load_config(cfg, WithPrompt, [f'prompt.plain="{value}"']).prompt.plain == value


class JsonSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["json"]
    paths: list[str]


class CsvSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["csv"]
    paths: list[str]


class WithSources(BaseModel):
    sources: list[Annotated[JsonSource | CsvSource, Field(discriminator="format")]]


def test_a_key_inside_a_tagged_union_is_named_as_written(tmp_path):
    """``sources.1.bogus``, not pydantic's ``sources.1.csv.bogus`` ("csv" is the tag)."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("sources:\n  - {format: json, paths: [a]}\n  - {format: csv, paths: [b]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg, WithSources, ["sources.1.bogus=1", "sources.0.paths=3"])
    lines = str(info.value).splitlines()[1:]
    assert "  - sources.0.paths: Input should be a valid list (the value given with --set)" in lines
    assert any(line.startswith("  - sources.1.bogus: unknown key") for line in lines)

"""DesignedTask (prompt design's inputs): the template, seeded demonstrations, and how a long input is cut."""

from __future__ import annotations

import pytest

from prompt_tuning.data.design import DesignedTask, template_fields
from prompt_tuning.data.mixture import Mixture
from prompt_tuning.data.quickstart import vocabulary
from prompt_tuning.data.task import DataError, TextTask


def _task(
  name: str = "design_unit", train: int = 6, validation: int = 3, template: str = "sentence: {text}"
) -> TextTask:
  def rows(prefix: str, n: int):
    return lambda: [{"text": f"{prefix} {i}", "label": i % 2} for i in range(n)]

  return TextTask(
    name,
    vocabulary(),
    {"train": rows("train", train), "validation": rows("valid", validation)},
    template,
    "label",
    labels=["negative", "positive"],
  )


def test_template_and_demonstrations_build_the_input():
  task = DesignedTask(_task(train=1), "Q: {inputs} A:", shots=1, inputs_length=512)
  examples = list(task.examples("validation"))
  # One training example, so one possible demonstration, always shown before the query.
  assert [ex["inputs"] for ex in examples] == [
    f"Q: sentence: train 0 A: negative Q: sentence: valid {i} A:" for i in range(3)
  ]
  assert [ex["targets"] for ex in examples] == ["negative", "positive", "negative"]  # targets are the task's
  assert task.used("validation") == [1, 1, 1] and task.candidates == ["negative", "positive"]


def test_demonstrations_are_seeded_distinct_and_never_the_example_itself():
  base = _task(train=6)
  draws = lambda seed, split: [  # noqa: E731
    [d["idx"] for d in DesignedTask(base, "{inputs}", 3, 512, seed=seed).draw(i, ex, split)]
    for i, ex in enumerate(base.examples(split))
  ]
  first = draws(0, "validation")
  assert first == draws(0, "validation")  # the same seed draws the same demonstrations
  assert first != draws(1, "validation")
  assert all(len(set(d)) == 3 for d in first)
  on_train = draws(0, "train")  # evaluating the demonstrations' own split: never the example itself
  assert all(i not in d and len(d) == 3 for i, d in enumerate(on_train))


def test_a_mixture_draws_demonstrations_of_the_same_task():
  a, b = _task("design_a", template="a: {text}"), _task("design_b", template="b: {text}")
  mixture = DesignedTask(Mixture("design_mix", [a, b]), "{inputs}", shots=2, inputs_length=512)
  for example in mixture.examples("validation"):
    prefix = example["task"][-1]
    parts = example["inputs"].split(f" {prefix}: ")
    assert len(parts) == 3 and parts[0].startswith(f"{prefix}: train"), example["inputs"]


def test_a_long_input_drops_the_earliest_demonstrations_first():
  base = _task(train=4)
  full = DesignedTask(base, "{inputs}", shots=3, inputs_length=512)
  example = next(base.examples("validation"))
  demos = full.draw(0, example, "validation")
  texts = [full.demonstration(d) for d in demos]
  query_length = len(vocabulary().encode("sentence: valid 0"))
  fits_two = len(vocabulary().encode(" ".join([*texts[1:], "sentence: valid 0"]))) + 1
  cut = DesignedTask(base, "{inputs}", shots=3, inputs_length=fits_two)
  designed, kept = cut.design(demos, example)
  assert kept == 2 and designed == " ".join([*texts[1:], "sentence: valid 0"])  # the first one went
  alone = DesignedTask(base, "{inputs}", shots=3, inputs_length=query_length)  # the query alone overflows
  assert alone.design(demos, example) == ("sentence: valid 0", 0)  # then the pipeline cuts it, as any input


@pytest.mark.parametrize(
  "template, message",
  [
    ("", "must be a non-empty str.format template"),
    ("{inputs} {targets}", "names {targets}, the answer"),
    ("{0}", "use named fields"),
    ("{inputs", "PROMPT_DESIGN_TEMPLATE '{inputs'"),
  ],
)
def test_a_bad_template_is_one_line(template, message):
  with pytest.raises(ValueError) as error:
    template_fields(template)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_a_template_field_the_examples_lack_is_one_line():
  task = DesignedTask(_task(), "{premise}", shots=0, inputs_length=64)
  with pytest.raises(DataError, match=r"names field 'premise', which examples of task design_unit lack \(they have"):
    list(task.examples("validation"))

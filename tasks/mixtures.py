"""Task mixtures, after T5's `t5/data/mixtures.py`.

super_glue_v102_proportional: the SuperGLUE training tasks mixed in proportion
to their sizes, as T5's mixture of the same name (whose rates are the tasks'
example counts, uncapped; ReCoRD's 138,854 is far below T5's usual
examples-proportional cap of 2**19, so no cap is needed to match it). WSC is
T5's simplified pair: `_simple_train` for training, `_simple_eval` for
validation/test. T5 also lists DPR (not registered here) and AX-b/AX-g at rate
0; the diagnostics are left out, since their labelled 'validation' would enter
the mixture's average: evaluate them as tasks of their own.

super_glue_v102_proportional_taskless: the same over the `_taskless` tasks.
"""

from __future__ import annotations

from prompt_tuning.data.mixture import Mixture
from prompt_tuning.data.task import get_task, register_task
from prompt_tuning.tasks import super_glue  # noqa: F401  (registers the tasks)

SUPER_GLUE_TRAINING_TASKS = (
  "super_glue_boolq_v102",
  "super_glue_cb_v102",
  "super_glue_copa_v102",
  "super_glue_multirc_v102",
  "super_glue_record_v102",
  "super_glue_rte_v102",
  "super_glue_wic_v102",
  "super_glue_wsc_v102_simple_train",
  "super_glue_wsc_v102_simple_eval",
)
SUPER_GLUE_CAP = None  # T5's super_glue_v102_proportional rates are uncapped example counts

for _suffix in ("", "_taskless"):
  register_task(
    Mixture(
      f"super_glue_v102_proportional{_suffix}",
      [get_task(name + _suffix) for name in SUPER_GLUE_TRAINING_TASKS],
      cap=SUPER_GLUE_CAP,
    )
  )

"""The entry points, each taking the specs of prompt_tuning.runs.specs:

  train.train        train a prompt (or, with TRAINABLE_PARAMS '.*', the whole model)
  evaluate.evaluate  the task's metrics for the trained prompt of a MODEL_DIR
  infer.infer        its predictions as JSONL (and SuperGLUE leaderboard files)

They share one setup (setup.build). The CLI (prompt_tuning.cli) builds their specs from gin.
"""

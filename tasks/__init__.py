"""seqio task registrations, installed as `prompt_tuning.tasks`."""

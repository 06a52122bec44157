"""Networks: the frozen T5 and (later) the prompt layer."""

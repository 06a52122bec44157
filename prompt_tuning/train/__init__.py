"""Training a prompt (or, with a '.*' regex, the whole model) against a frozen T5."""

"""Training data: the reference manifest, toy stand-ins, examples, the grain pipeline, pre-encoding."""

"""Agent evaluation: tools (``calculate``), ReAct step formatting/parsing, task metrics."""

"""``natscale eval``: run a model as a ReAct agent with its tools and score its answers."""

"""hatzoo: HAT (Hard Attention to the Task) continual-learning model zoo."""

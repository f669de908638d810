"""The data layer: events, workspace, sessions, features, synthetic data and the models. Knows nothing of LLMs."""

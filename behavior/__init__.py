"""The data layer: events, workspace, sessions, features, synthetic data and the models. Knows nothing of LLMs."""

from shopsight import refuse_top_level_import  # noqa: E402

refuse_top_level_import(__name__)

"""integrations"""

from shopsight import refuse_top_level_import  # noqa: E402

refuse_top_level_import(__name__)

from .legacy import *  # noqa: F401,F403
from .legacy import __all__  # noqa: F401

"""Transfer learning on cached CNN codes: extract once, train many cheap heads."""

import os

from pipeline import quiet

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
quiet.install()

__version__ = "0.1.0"

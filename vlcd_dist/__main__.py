"""``python -m vlcd_dist`` is the ``vlcd`` command (what ``accelerate launch -m`` needs)."""

import sys

from .cli import main

sys.exit(main())

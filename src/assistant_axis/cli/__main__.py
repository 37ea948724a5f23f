"""``python -m assistant_axis.cli``: the ``assistant-axis`` command without its console script (tests start servers this way)."""

import sys

from . import main

sys.exit(main())

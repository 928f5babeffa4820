"""``python -m phasetrace``: the same as the ``phasetrace`` command."""

import sys

from phasetrace.cli import main

sys.exit(main())

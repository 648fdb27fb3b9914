"""``python -m fer_edge``: same as the ``fer-edge`` command."""

import sys

from fer_edge.cli import main

sys.exit(main())

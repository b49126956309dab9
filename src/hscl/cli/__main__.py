"""``python -m hscl.cli ...``: the same as the ``hscl`` command."""

import sys

from hscl.cli import main

sys.exit(main())

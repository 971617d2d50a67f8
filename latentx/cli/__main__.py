"""``python -m latentx.cli`` (and ``torchrun -m latentx.cli``) runs the ``latentx`` command."""

import sys

from latentx.cli import main

sys.exit(main())

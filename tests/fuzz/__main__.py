"""``python -m tests.fuzz [--requests N] [--seed S]``: what ``make fuzz`` runs."""

import sys

from tests.fuzz.runner import main

sys.exit(main())

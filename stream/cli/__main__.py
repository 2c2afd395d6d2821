"""``python -m stream.cli``: the ``headrace`` command."""

import sys

from stream.cli.main import main

sys.exit(main())

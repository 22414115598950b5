"""``python -m ops.fleet``, from the repository's root."""

import sys

from ops.fleet.main import main

sys.exit(main())

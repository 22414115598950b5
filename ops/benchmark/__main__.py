"""``python -m ops.benchmark``, from the repository's root."""

import sys

from ops.benchmark.main import main

sys.exit(main())

"""``python -m ops.soak``, from the repository's root."""

import sys

from ops.soak.main import main

sys.exit(main())

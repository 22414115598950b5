"""Examples: ``examples/demo.py`` (``from examples import demo``) and the demo flows."""

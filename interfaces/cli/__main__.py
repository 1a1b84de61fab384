"""`python -m interfaces.cli ...` is `llm-maps ...`."""

import sys

from interfaces.cli import main

sys.exit(main())

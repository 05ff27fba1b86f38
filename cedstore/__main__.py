"""``python -m cedstore``: the cedstore command line."""

import sys

from cedstore.cli import main

sys.exit(main())

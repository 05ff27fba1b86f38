"""``python -m ced_train ...`` is the ``ced-train`` command."""

import sys

from ced_train.cli import main

sys.exit(main())

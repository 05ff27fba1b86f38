"""``python -m ced_train ...`` is the ``ced-train`` command."""

import sys

try:
    from ced_train.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command starts: the same line and status as later
    print("ced-train: error: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

sys.exit(main())

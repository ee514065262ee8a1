"""``python -m vlprompt.cli``: the same as the ``vlprompt`` console script."""

import sys

from vlprompt.cli import main

sys.exit(main())

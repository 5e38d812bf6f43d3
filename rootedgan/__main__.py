"""``python -m rootedgan COMMAND ...``: the console script (``rootedgan compare`` runs finetunes so)."""

import sys

from rootedgan.cli import main

if __name__ == "__main__":
    sys.exit(main())

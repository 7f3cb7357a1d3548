"""``python -m archive`` runs the CLI."""

import sys

from archive.cli import main

sys.exit(main())

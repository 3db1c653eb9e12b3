"""`python -m jobcast` is the `jobcast` command."""

import sys

from jobcast.cli import main

sys.exit(main())

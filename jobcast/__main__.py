"""`python -m jobcast` is the `jobcast` command."""

import sys

from jobcast.cli.main import main

sys.exit(main())

"""`python -m producer` is the `jobcast` command."""

import sys

from producer.cli import main

sys.exit(main())

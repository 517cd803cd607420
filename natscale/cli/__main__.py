"""`python -m natscale.cli ...` and `deepspeed --module natscale.cli train ...` entry point."""

import sys

from natscale.cli.main import main

sys.exit(main())

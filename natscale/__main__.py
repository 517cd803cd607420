import sys

from natscale.cli.main import main

sys.exit(main())

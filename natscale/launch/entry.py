"""``python natscale/launch/entry.py COMMAND ...``: the natscale CLI started by file path.

DeepSpeed's slurm runner starts ``srun ... python -u SCRIPT ARGS`` and, unlike its pdsh and
openmpi runners, has no ``--module`` form, so ``natscale launch --backend slurm`` points it here.
Python puts this script's directory first on sys.path; it is removed so that the modules beside
this file cannot shadow top-level packages of the same name.
"""

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

from natscale.cli.main import main

sys.exit(main())

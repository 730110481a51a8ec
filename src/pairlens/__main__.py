"""``python -m pairlens`` runs the command line (also ``torchrun -m pairlens evaluate ...``)."""

import sys

from pairlens.cli import main

sys.exit(main())

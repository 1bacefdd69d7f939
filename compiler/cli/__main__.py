"""``python -m edgec.compiler.cli``: the edgec command line."""
import sys

from edgec.compiler.cli import main

sys.exit(main())

import sys

from edgec.compiler.cli import main

sys.exit(main())

import sys

from evstack.cli import main

sys.exit(main())

import sys

from celadon.cli import main

sys.exit(main())

import sys

from pedseg.cli import main

sys.exit(main())

import sys

from focusft.demo.cli import main

sys.exit(main())

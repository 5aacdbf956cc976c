import sys

from resnetlab.cli import main

sys.exit(main())

"""`python -m edge_daemon --simulate`."""

import sys

from edge_daemon.main import main

sys.exit(main())

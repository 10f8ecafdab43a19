"""`python -m debugreg.loadtest`: the same as `debugreg loadtest`."""

import sys

from debugreg.loadtest import main

sys.exit(main())

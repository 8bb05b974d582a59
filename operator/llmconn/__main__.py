"""`python -m llmconn` is the `llmconn` command."""

import sys

from llmconn.cli.main import main

sys.exit(main())

"""``python -m lerobot_assets.cli``: the ``lerobot-assets`` command."""

import sys

from lerobot_assets.cli.main import main

sys.exit(main())

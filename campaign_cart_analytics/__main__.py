"""``python -m campaign_cart_analytics``: the command line (see ``cli``)."""

from .cli import main

raise SystemExit(main())

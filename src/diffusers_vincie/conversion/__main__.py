"""``python -m diffusers_vincie.conversion --official DIR --out DIR``: see :mod:`.convert`."""

from .convert import main

raise SystemExit(main())

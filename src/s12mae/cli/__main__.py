"""``python -m s12mae.cli`` (e.g. under ``torchrun -m s12mae.cli pretrain ...``)."""

from s12mae.cli import main

raise SystemExit(main())

"""``python -m rl_trainer`` (and ``accelerate launch -m rl_trainer``) runs the CLI."""

from rl_trainer.cli import main

raise SystemExit(main())

from optuna_ift.cli import main

raise SystemExit(main())

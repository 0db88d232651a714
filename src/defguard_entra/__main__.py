from defguard_entra.cli import main

raise SystemExit(main())

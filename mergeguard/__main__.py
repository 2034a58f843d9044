from mergeguard.cli import main

raise SystemExit(main())

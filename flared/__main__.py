from flared.cli import main

raise SystemExit(main())

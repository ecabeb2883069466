from mailtalk.cli import main

raise SystemExit(main())

from genq.cli import main

raise SystemExit(main())

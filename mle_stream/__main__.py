from mle_stream.cli import main

raise SystemExit(main())

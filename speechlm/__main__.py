import sys

from speechlm.cli.main import main

sys.exit(main())

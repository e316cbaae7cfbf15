import sys

from llm4tag.cli import main

sys.exit(main())

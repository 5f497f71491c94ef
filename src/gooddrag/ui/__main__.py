"""``python -m gooddrag.ui``: the same as ``gooddrag ui`` (one parser, one error path).

This is an entry point run as a script, never imported by the library; it is the
one place in the package that reaches the command line (the import-linter
contract in pyproject.toml names it as an exception).
"""

import sys

from gooddrag.cli import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))

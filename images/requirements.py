"""Prints the requirements pyproject.toml declares for the package and the extras named on the
command line, one a line: an image installs them in a layer of its own before it copies the
code, so that a change to the code rebuilds only the small layer on top."""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path(sys.argv[1]).read_text())["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[2:]:
    requirements += project["optional-dependencies"][extra]
print("\n".join(dict.fromkeys(requirements)))

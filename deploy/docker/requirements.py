"""Print xmlx's runtime requirements from pyproject.toml, leaving out named distributions.

Used inside the image builds (standard library only, so it runs before anything is
installed): the API image must not carry TensorFlow, and the GPU worker image brings its
own CUDA build of TensorFlow, which the CPU wheel pinned in pyproject would overwrite.

    python requirements.py pyproject.toml --exclude tensorflow tensorflow-cpu > req.txt
"""

import argparse
import re
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path, exclude: set[str], extras: list[str]) -> list[str]:
    """Dependency strings (markers kept, pip evaluates them) minus excluded names."""
    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines.extend(project["optional-dependencies"][extra])
    dropped = {canonical(name) for name in exclude}
    kept = []
    for line in lines:
        match = _NAME.match(line)
        if match is None:
            raise ValueError(f"unparsable requirement: {line!r}")
        if canonical(match.group(1)) not in dropped:
            kept.append(line)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--exclude", nargs="*", default=[])
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, set(args.exclude), args.extra)))


if __name__ == "__main__":
    main()

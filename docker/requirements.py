"""Print the pip requirements one image needs, read from pyproject.toml at build time.

Run inside `docker build` (python >= 3.11 for tomllib): the dependencies layer then depends
only on pyproject.toml, so editing the code does not reinstall anything. An image gets the base
dependencies plus the extra pyproject.toml declares for its role (nested `pizzactl[...]` extras
expanded): the gateway [gateway] (no TensorFlow, no numpy), the model server [serve], the
trainer [train-libs] (everything training needs but TensorFlow itself, which its Dockerfile
installs first as a layer of its own, shared with the model server image: tensorflow-cpu, or
tensorflow[and-cuda] for --gpu).

    python requirements.py gateway|modelserver|trainer pyproject.toml
"""

import re
import sys
import tomllib

EXTRA_OF_ROLE = {"gateway": "gateway", "modelserver": "serve", "trainer": "train-libs"}
SELF = re.compile(r"^\s*pizzactl\s*\[([^\]]*)\]\s*$")


def name_of(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def expand(extras: dict[str, list[str]], extra: str, seen: set[str]) -> list[str]:
    """The requirements of `extra`, with `pizzactl[a,b]` replaced by those extras' requirements."""
    if extra in seen:
        return []
    seen.add(extra)
    out: list[str] = []
    for requirement in extras[extra]:
        nested = SELF.match(requirement)
        if nested:
            for name in nested.group(1).split(","):
                out += expand(extras, name.strip(), seen)
        else:
            out.append(requirement)
    return out


def requirements(role: str, project: dict) -> list[str]:
    extras = project.get("optional-dependencies", {})
    deps = list(project["dependencies"]) + expand(extras, EXTRA_OF_ROLE[role], set())
    unique: dict[str, str] = {}
    for dep in deps:
        unique.setdefault(name_of(dep), dep)  # numpy may come from two extras: once
    return list(unique.values())


def main(role: str, pyproject: str) -> None:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    for dep in requirements(role, project):
        print(dep)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

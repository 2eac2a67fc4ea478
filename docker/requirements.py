"""Print the pip requirements one image needs, read from pyproject.toml at build time.

Run inside `docker build` (python >= 3.11 for tomllib): the dependencies layer then depends
only on pyproject.toml, so editing the code does not reinstall anything. The gateway image
leaves out what only the CLI needs (Kaggle, Docker, Kubernetes clients) and numpy, and never
gets TensorFlow, which is an extra. The trainer adds the [train] extra, except TensorFlow,
which its Dockerfile installs first (a layer of its own, shared with the model server image),
and keeps the Kaggle clients (a Job downloads the dataset itself when no --data is given).

    python requirements.py gateway|modelserver|trainer pyproject.toml
"""

import re
import sys
import tomllib

CLI_ONLY = {"kaggle", "kagglehub", "docker", "kubernetes"}
EXCLUDE = {
    # numpy alone is ~75 MB: the gateway handles bytes and JSON, never arrays.
    "gateway": CLI_ONLY | {"tensorflow", "tensorflow-cpu", "numpy"},
    "modelserver": CLI_ONLY,
    "trainer": {"docker", "kubernetes", "tensorflow", "tensorflow-cpu"},
}
EXTRAS = {"trainer": ["train"]}


def name_of(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def main(role: str, pyproject: str) -> None:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    deps = list(project["dependencies"])
    for extra in EXTRAS.get(role, []):
        deps += project.get("optional-dependencies", {}).get(extra, [])
    for dep in deps:
        if name_of(dep) not in EXCLUDE[role]:
            print(dep)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Packaging that pyproject.toml cannot say: k8s/ and docker/ live at the top of the repository,
where users run `kubectl apply -k k8s/` and `docker build -f docker/...`, and are installed
inside the package (pizzactl/k8s, pizzactl/docker) so an installed pizzactl finds them.
Real directories, not symlinks: those break on Windows checkouts.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "pizzactl.k8s", "pizzactl.docker"],
    package_dir={"": "src", "pizzactl.k8s": "k8s", "pizzactl.docker": "docker"},
    package_data={"pizzactl": ["serving/static/*"], "pizzactl.k8s": ["*.yaml", "training/*.yaml"], "pizzactl.docker": ["*"]},
)

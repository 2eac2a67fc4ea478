"""`python -m pizzactl.serving.modelserver` (the Dockerfile, `pizzactl serve` and deploy start it so)."""

from pizzactl.serving.modelserver.app import main

main()

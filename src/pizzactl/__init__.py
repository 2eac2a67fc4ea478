"""pizzactl: an image classifier ("is this a pizza?") from data to a Kind cluster, in one CLI.

The CLI is a thin layer over this package; a notebook can import the same functions:

    from pizzactl.train import train
    result = train(settings)
"""

__version__ = "0.1.0"

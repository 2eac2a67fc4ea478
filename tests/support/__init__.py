"""The test kit: fakes at pizzactl's library boundaries, shared fixtures, one CLI runner, photos.

Test modules import from here, never from each other. conftest registers the fixture modules
as pytest plugins (`pytest_plugins`); see docs/development.md.
"""

"""The model contract: what an exported version is, and everything that reads or writes one.

`store` (versions on disk), `card` (pizzactl.json as a typed `ModelCard`), `contract` (the
signatures, their outputs, the class and threshold rules), `decode` (the one image decode),
`export` (SavedModel + self-check), `litert` (LiteRT artefacts and their accept rule) and
`runtimes` (what runs a version: TensorFlow or LiteRT). Serving, training, evaluation and
deployment sit above this package; nothing here imports them (tests/test_layers.py checks).
"""

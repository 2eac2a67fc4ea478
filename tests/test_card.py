"""pizzactl.json as a ModelCard: typed fields for the readers, the file itself unchanged.

Older cards (before `positive_class`, `probabilities` and `runtimes` existed) and newer ones (keys
this version does not know) must load and be written back byte for byte; cards written by other
tools hold any subset of the fields (tests/k8s_batch_fakes.py, a TF Serving export with classes)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pizzactl.errors import ModelNotFoundError
from pizzactl.model.card import ModelCard, card_path

# What an export of an early pizzactl wrote: no positive_class, no runtimes, a binary
# `serving_default` without `probabilities`, and a key later versions dropped (`framework`).
OLDER = """{
  "backbone": "mobilenet_v2",
  "classes": [
    "not_pizza",
    "pizza"
  ],
  "created": "2026-11-02T09:14:03+00:00",
  "data_hash": "5f0c",
  "framework": "keras",
  "image_size": 224,
  "metrics": {
    "val_accuracy": 0.91
  },
  "name": "pizza",
  "pizzactl_version": "0.0.9",
  "signatures": {
    "serving_default": {
      "inputs": {
        "image_bytes": {
          "dtype": "string",
          "shape": [
            null
          ]
        }
      },
      "outputs": {
        "label": {
          "dtype": "string",
          "shape": [
            null
          ]
        },
        "probability": {
          "dtype": "float32",
          "shape": [
            null
          ]
        }
      }
    }
  },
  "tensorflow_version": "2.16.1",
  "threshold": 0.5,
  "weights": "imagenet"
}
"""


def _write(version, text: str) -> None:
    card_path(version).parent.mkdir(parents=True)
    card_path(version).write_text(text)


def test_an_older_card_loads_with_defaults_and_is_written_back_byte_for_byte(tmp_path):
    _write(tmp_path / "1", OLDER)
    card = ModelCard.load(tmp_path / "1")
    assert card.classes == ("not_pizza", "pizza") and card.image_size == 224 and card.threshold == 0.5
    assert card.positive_class is None and card.runtimes is None and card.runtime("litert") == {}
    assert card.extra == {"framework": "keras"}
    card.save(tmp_path / "2")
    assert card_path(tmp_path / "2").read_text() == OLDER


def test_a_newer_cards_unknown_keys_survive_a_change(tmp_path):
    newer = json.loads(OLDER) | {"calibration": {"photos": 100}, "runtimes": {"litert": {"ok": True}}}
    _write(tmp_path / "1", json.dumps(newer))
    card = ModelCard.load(tmp_path / "1").replace(self_check={"n_images": 3})
    assert card.runtime("litert") == {"ok": True}
    assert card.to_dict() == newer | {"self_check": {"n_images": 3}}


@pytest.mark.parametrize(
    "data",
    [
        {"classes": ["hot dog", "pizza", "salad"]},  # a TF Serving export given its classes (test_manifests)
        {"backbone": "small_cnn", "run_id": "20250101-120000-small_cnn", "classes": ["a", "b"]},  # a Job's trainer
        {"classes": ["a", "b", "c"], "threshold": None, "positive_class": None, "metrics": None},
        {},
    ],
)
def test_a_card_holding_some_of_the_fields_says_just_those(data):
    assert ModelCard.from_dict(data).to_dict() == data


def test_a_card_is_frozen_and_a_new_one_holds_exactly_what_it_was_built_with():
    card = ModelCard.build(name="pizza", classes=["a", "b"], threshold=None, note="kept")
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.threshold = 0.3  # type: ignore[misc]
    assert card.to_dict() == {"name": "pizza", "classes": ["a", "b"], "threshold": None, "note": "kept"}
    assert card.binary and card.extra == {"note": "kept"}


@pytest.mark.parametrize("text", ["not json", "[1, 2]"])
def test_a_card_that_is_not_a_json_object_is_refused_with_a_hint(tmp_path, text):
    _write(tmp_path / "1", text)
    with pytest.raises(ModelNotFoundError, match=r"pizzactl\.json") as err:
        ModelCard.load(tmp_path / "1")
    assert "Export the model again" in (err.value.hint or "")
    assert ModelCard.read(tmp_path / "1") is None  # the model server serves such a version without one


def test_no_card_reads_as_none_and_loads_as_model_not_found(tmp_path):
    (tmp_path / "1").mkdir()
    assert ModelCard.read(tmp_path / "1") is None
    with pytest.raises(ModelNotFoundError, match="not exported by pizzactl"):
        ModelCard.load(tmp_path / "1")

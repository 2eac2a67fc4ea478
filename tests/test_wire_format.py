"""A binary model's wire format is what it was before N-class models, plus `probabilities`.

tests/golden/binary_wire.json holds the raw response bodies that pizzactl answered, before
models could have more than two classes (main at d3783fd), for a binary model with fixed
weights: the model server's TF Serving `:predict` (row and columnar) and `/metadata` outputs,
and the gateway's `/predict` and `/predict/batch`. Today's bodies, with the `probabilities`
member cut out of the raw text, must be the same bytes: a TF Serving client of the pizza model
sees no change but the added output.

What is compared byte for byte is everything but the numbers: the structure, the field order,
the labels, the spacing. The numbers are compared within 1e-6 (absolute; every one of them is a
probability in [0, 1], a version or a shape). The answers come from float32 kernels, whose sums
are ordered by the SIMD width the CPU offers: TensorFlow's oneDNN/Eigen kernels on a CPU with
AVX-512 and on one with AVX2 + FMA only (0.006484947 vs 0.006484948; 0.4436081 vs 0.4436083,
measured on a 2-core AMD EPYC without AVX-512), NEON on arm64, and LiteRT's XNNPACK on any of
them, differ in the last one to three units of float32's ~6e-8 step near 1. 1e-6 allows ~16 such
units and is still a thousand times finer than any change a model or wire-format edit makes.

`PIZZACTL_RECORD_GOLDEN=1 pytest tests/test_wire_format.py` rewrites the file (only ever from
the commit the golden describes).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import httpx
import pytest

from support.processes import free_port
from support.serving_fixtures import ModelServerProcess, UvicornThread

GOLDEN = Path(__file__).with_name("golden") / "binary_wire.json"
SIZE = 32


def fixed_classifier():
    """float32 [N,32,32,3] 0..255 -> [N,1] P(pizza), every weight drawn from a seeded numpy RNG.

    No training and no Keras initialiser: the same weights on any machine and Keras version.
    """
    import keras
    import numpy as np

    pixels = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(pixels)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    p = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(pixels, p, name="fixed")
    rng = np.random.default_rng(18)
    model.set_weights([rng.normal(0, 1.5, w.shape).astype("float32") for w in model.get_weights()])
    return model


def images() -> list[bytes]:
    """Four lossless PNGs, different sizes and colours (their answers spread over 0..1)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    out = []
    for i, colour in enumerate(((220, 60, 30), (30, 90, 220), (240, 230, 200), (20, 20, 20))):
        arr = np.clip(np.array(colour) + rng.integers(-60, 60, (40 + 8 * i, 48, 3)), 0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The fixed classifier exported, with its float32 LiteRT artefact (int8 has no held-out images to pass)."""
    from pizzactl.model.card import ModelCard
    from pizzactl.model.export import export_model

    root = tmp_path_factory.mktemp("wire") / "models"
    metadata = {"backbone": "fixed", "image_size": SIZE, "classes": ["not_pizza", "pizza"], "threshold": 0.5}
    version = export_model(fixed_classifier(), root, metadata, images())
    assert ModelCard.load(version).runtime("litert")["ok"] is True
    return root


@pytest.fixture(scope="module", params=["tensorflow", "litert"])
def runtime(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bodies(models, runtime):
    """The raw bodies of every answer the golden file holds, from a real model server (on `runtime`) and gateway."""
    blobs = images()
    log_path = models.parent / f"modelserver-{runtime}.log"
    server = ModelServerProcess(models, free_port(), args=("--runtime", runtime), log_path=log_path).start()
    try:
        server.wait_available()
        served = httpx.get(f"{server.url}/v1/models/pizza/versions/1/metadata").json()["metadata"]["runtime"]
        assert served == runtime
        from pizzactl.serving.gateway import create_app

        predict = f"{server.url}/v1/models/pizza:predict"
        got = {
            "modelserver_row": httpx.post(predict, json={"instances": [{"b64": b64(b)} for b in blobs]}),
            "modelserver_columnar": httpx.post(predict, json={"inputs": [{"b64": b64(b)} for b in blobs]}),
        }
        metadata_body = httpx.get(f"{server.url}/v1/models/pizza/versions/1/metadata").json()
        with UvicornThread(create_app(server.url, allow_private_urls=False)) as gateway:
            got["gateway_predict"] = httpx.post(f"{gateway.url}/predict", json={"image_b64": b64(blobs[0])})
            got["gateway_batch"] = httpx.post(
                f"{gateway.url}/predict/batch", json=[{"image_b64": b64(b)} for b in blobs]
            )
    finally:
        server.stop()
    for name, response in got.items():
        assert response.status_code == 200, (name, response.text)
    result = {name: response.text for name, response in got.items()}
    signatures = metadata_body["metadata"]["signature_def"]["signature_def"]
    result["metadata_outputs"] = json.dumps(
        {sig: signatures[sig]["outputs"] for sig in ("serving_default", "serving_pixels")}, sort_keys=True
    )
    if os.environ.get("PIZZACTL_RECORD_GOLDEN") == "1" and runtime == "tensorflow":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def golden() -> dict[str, str]:
    return json.loads(GOLDEN.read_text())


def without_probabilities(text: str) -> str:
    """`text` with every `"probabilities": <array or object>` member and its joining comma cut out.

    The servers answer compact JSON (no spaces); the value is skipped by counting brackets
    (columnar answers nest lists), which is safe as long as no string in it holds a bracket.
    """
    key = '"probabilities":'
    while (start := text.find(key)) >= 0:
        end, depth = start + len(key), 0
        while True:
            depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(text[end], 0)
            end += 1
            if depth == 0:
                break
        if text[end] == ",":
            end += 1
        elif text[start - 1] == ",":
            start -= 1
        text = text[:start] + text[end:]
    return text


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
FLOAT32_KERNELS = 1e-6  # see the module docstring: float32 sums ordered by the CPU's SIMD width


@pytest.mark.slow
@pytest.mark.parametrize("name", ["modelserver_row", "modelserver_columnar", "gateway_predict", "gateway_batch"])
def test_answers_are_the_old_bytes_plus_probabilities(bodies, runtime, name):
    assert "probabilities" in bodies[name]
    """On every runtime and CPU: the same text around the numbers, the numbers within FLOAT32_KERNELS."""
    got, want = without_probabilities(bodies[name]), golden()[name]
    assert NUMBER.sub("#", got) == NUMBER.sub("#", want)
    numbers = [float(x) for x in NUMBER.findall(got)]
    assert numbers == pytest.approx([float(x) for x in NUMBER.findall(want)], abs=FLOAT32_KERNELS)


def test_the_comparison_tells_a_changed_number_or_field_order_from_kernel_rounding():
    """The tolerance admits what another CPU's kernels print, and nothing a real change would."""

    def same(got: str, want: str) -> bool:
        numbers = [float(x) for x in NUMBER.findall(got)]
        return NUMBER.sub("#", got) == NUMBER.sub("#", want) and numbers == pytest.approx(
            [float(x) for x in NUMBER.findall(want)], abs=FLOAT32_KERNELS
        )

    want = '{"label":"not_pizza","probability":0.4436081,"model_version":1}'
    assert same('{"label":"not_pizza","probability":0.4436083,"model_version":1}', want)  # AVX2 vs AVX-512
    assert not same('{"label":"not_pizza","probability":0.4436181,"model_version":1}', want)  # 1e-5 off
    assert not same('{"probability":0.4436081,"label":"not_pizza","model_version":1}', want)  # field order
    assert not same('{"label":"not_pizza","probability":0.4436081,"model_version":2}', want)


@pytest.mark.slow
def test_binary_probabilities_are_one_minus_p_and_p_in_classes_order(bodies):
    rows = json.loads(bodies["modelserver_row"])["predictions"]
    for row in rows:
        q, p = row["probabilities"]
        assert p == row["probability"] and q == pytest.approx(1 - p, abs=1e-6)
    assert {row["label"] for row in rows} == {"pizza", "not_pizza"}  # the images span both answers
    columns = json.loads(bodies["modelserver_columnar"])["outputs"]
    assert columns["probabilities"] == [row["probabilities"] for row in rows]
    for answer, row in zip(json.loads(bodies["gateway_batch"]), rows, strict=True):
        assert list(answer["probabilities"]) == ["not_pizza", "pizza"]
        assert answer["probabilities"]["pizza"] == answer["probability"]
        assert answer["label"] == row["label"]


@pytest.mark.slow
def test_metadata_outputs_are_the_old_ones_plus_probabilities(bodies):
    old, new = json.loads(golden()["metadata_outputs"]), json.loads(bodies["metadata_outputs"])
    for sig in ("serving_default", "serving_pixels"):
        assert new[sig]["probabilities"]["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in new[sig]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "2"]
        assert {k: {**v, "name": ""} for k, v in new[sig].items() if k != "probabilities"} == {
            k: {**v, "name": ""} for k, v in old[sig].items()
        }  # tensor names are positions in the sorted outputs: "StatefulPartitionedCall:<i>"

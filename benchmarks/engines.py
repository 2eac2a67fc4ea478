#!/usr/bin/env python3
"""Other inference engines for the classifier, side by side with LiteRT and TensorFlow, each behind export's rule.

For a trained run and its exported version, builds the classifier for each engine (ONNX Runtime
float and static int8, OpenVINO float and NNCF int8; LiteRT float and int8 and TensorFlow as
references), then:
  accuracy  every engine's answers on the run's held-out validation photos and the check photos,
            decoded once by the serving graph's own decode (`runtimes.decoder`), compared with the
            SavedModel's `serving_default` answers by export's rule (`convert.judge`: flips each
            way, the one-sided p, |dp| at a percentile); a float engine is held to float LiteRT's
            tolerance, an int8 (or bf16) one to int8's
  speed     images/s of the classifier alone at batch 1 and at the model server's batch size,
            engines in alternating rounds on the same held-out pixels, the same threads
int8 engines are calibrated on the photos export calibrates LiteRT int8 on (`export.run_split`:
`calibration_records`, then `convert.calibration_sample`), and LiteRT int8 is converted again
from them here, so every int8 engine saw the same photos. Artefacts are cached in --work
(outside the repository); an engine that cannot be built is reported with the error, not skipped.

needs (not pizzactl dependencies): pip install onnxruntime tf2onnx onnx openvino nncf
usage: python benchmarks/engines.py RUN_DIR VERSION_DIR --work DIR [--engines a,b] [--threads 2]
       [--batch 32] [--images 32] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pizzactl.model.contract import expected_outputs
from pizzactl.model.litert import _answers, calibration_sample, judge, tflite_model
from pizzactl.model.runtimes import LITERT, LiteRTRuntime, TensorFlowRuntime, decoder
from pizzactl.tfimport import import_quietly
from pizzactl.train.reexport import load_run_classifier, run_check_images, run_split

ENGINES = (
    "tensorflow",
    "litert",
    "litert-int8",
    "onnx",
    "onnx-int8",
    "onnx-int8-u8s8",
    "openvino",
    "openvino-int8",
    "openvino-int8-mixed",
    "openvino-int8-nncf-default",
    "openvino-bf16",
)
# the tolerance each engine is held to: convert.judge's rule for float32 or for int8
RULE = {name: "litert-int8" if ("-int8" in name or "-bf16" in name) else "litert" for name in ENGINES}
SERVER_BATCH = 32  # the model server's max_batch_size default (config.py)

Classify = Callable[[np.ndarray], np.ndarray]  # float32 [N, S, S, 3] 0..255 -> raw output [N, K]


def verdict(rule: str, want, got, truth) -> dict[str, Any]:
    """Export's judgement of an engine: `want`/`got` map a photo set to (probabilities [N, K], label
    index [N]); `truth` holds the class index of each "holdout" photo. Pure: no engine, no TF."""
    per_photo = np.concatenate([np.max(np.abs(got[k][0] - want[k][0]), axis=1) for k in want if len(want[k][1])])
    entry: dict[str, Any] = {"max_abs_diff": float(per_photo.max())}
    refused = judge(rule, per_photo, want["holdout"][1] == truth, got["holdout"][1] == truth, entry)
    entry["ok"], entry["reason"] = not refused, "; ".join(refused)
    return entry


def answers(classify: Classify, pixels: np.ndarray, classes: list[str], threshold) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, label index) as the signatures answer them, from an engine's raw output."""
    raw = np.concatenate([classify(pixels[i : i + 16]) for i in range(0, len(pixels), 16)])
    out = expected_outputs(raw, classes, threshold)
    return out["probabilities"], np.array([classes.index(label) for label in out["label"]])


def row(name: str, result: dict[str, Any]) -> str:
    """One markdown table row of an engine's result (failed ones say why)."""
    if "error" in result:
        return f"| {name} | failed: {result['error']} |" + " |" * 7
    v, s = result["verdict"], result["speed"]
    flips, dp, acc = v["flips"], v["abs_diff"], v["holdout_accuracy"]
    q = next(k for k in dp if k not in ("p50", "n"))
    return (
        f"| {name} | {'accepted' if v['ok'] else 'refused: ' + v['reason']} | {flips['worse']} / {flips['better']} "
        f"| {flips['p_worse']:.3g} | {dp['p50']:.2g} / {dp[q]:.2g} ({q}) / {v['max_abs_diff']:.2g} "
        f"| {acc[next(k for k in acc if k not in ('savedmodel', 'n'))]:.4f} "
        f"| {s['batch1']:.1f} | {s['batchN']:.1f} | {s['cpu_ms']:.1f} / {s['cpu_msN']:.1f} |"
    )


# --- engines: each returns a Classify, building (and caching) its artefact in `work` ---------------


def build_tensorflow(ctx) -> Classify:
    import tensorflow as tf

    fn = tf.function(lambda x: ctx.classifier(x, training=False), input_signature=[ctx.spec()])
    return lambda x: fn(tf.constant(x)).numpy()


def _litert_version(ctx) -> Path:
    """A version directory LiteRTRuntime can load: pizzactl.json, float LiteRT as exported, int8 converted here."""
    version = ctx.work / "litert-version"
    target = version / "assets.extra"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(ctx.version / "assets.extra" / "pizzactl.json", target / "pizzactl.json")
    float_file = version / "assets.extra" / LITERT["litert"]
    if not float_file.is_file():
        float_file.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ctx.version / "assets.extra" / LITERT["litert"], float_file)
    int8_file = version / "assets.extra" / LITERT["litert-int8"]
    if not int8_file.is_file():
        int8_file.write_bytes(tflite_model(ctx.classifier, int8=True, calibration=ctx.calibration))
    return version


def build_litert(ctx, name: str = "litert") -> Classify:
    return LiteRTRuntime.load(_litert_version(ctx), 0, name, threads=ctx.threads).classify


def _onnx_float(ctx) -> Path:
    path = ctx.work / "classifier.onnx"
    if not path.is_file():
        import tensorflow as tf
        import tf2onnx

        fn = tf.function(lambda x: ctx.classifier(x, training=False), input_signature=[ctx.spec()])
        try:
            tf2onnx.convert.from_function(fn, input_signature=[ctx.spec()], opset=17, output_path=str(path))
        except Exception as exc:  # the Keras model's function: say why, then try the float .tflite
            print(f"tf2onnx from the Keras classifier failed ({type(exc).__name__}: {exc}); trying --tflite")
            tflite = str(ctx.version / "assets.extra" / LITERT["litert"])
            tf2onnx.convert.from_tflite(tflite, opset=17, output_path=str(path))
    return path


def _ort_session(ctx, path: Path) -> Classify:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = ctx.threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ORT's pool threads spin between ops by default: on cores shared with other jobs that burns
    # the CPU the other threads need; LiteRT and OpenVINO were not given spinning either
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def build_onnx(ctx) -> Classify:
    return _ort_session(ctx, _onnx_float(ctx))


def build_onnx_int8(ctx, activations: str = "s8") -> Classify:
    """Static int8, QDQ, per-channel weights, MinMax ranges. `s8`: int8 activations (ORT's default
    for QDQ); `u8`: uint8 activations with int8 weights (U8S8), the pairing ORT's x86 kernels use."""
    path = ctx.work / ("classifier-int8.onnx" if activations == "s8" else f"classifier-int8-{activations}.onnx")
    if not path.is_file():
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = ctx.work / "classifier-prep.onnx"
        if not prepared.is_file():
            quant_pre_process(str(_onnx_float(ctx)), str(prepared))

        class Reader(CalibrationDataReader):
            def __init__(self, name: str):
                self.feeds = iter([{name: p[None]} for p in ctx.calibration])

            def get_next(self):
                return next(self.feeds, None)

        import onnx

        name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        quantize_static(
            str(prepared),
            str(path),
            Reader(name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if activations == "s8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,  # as the LiteRT converter quantizes convolution weights
        )
    return _ort_session(ctx, path)


def _ov_compile(ctx, model, precision: str) -> Classify:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": ctx.threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: np.array(request.infer({0: np.ascontiguousarray(x, np.float32)})[compiled.output(0)])


def _ov_float(ctx):
    """OpenVINO's model of the classifier: read from the float .tflite, its batch made dynamic."""
    import openvino as ov

    model = ov.Core().read_model(str(ctx.version / "assets.extra" / LITERT["litert"]))
    model.reshape({model.input(0): ov.PartialShape([-1, ctx.size, ctx.size, 3])})
    return model


def build_openvino(ctx) -> Classify:
    return _ov_compile(ctx, _ov_float(ctx), "f32")  # f32 explicitly: on a bf16 CPU OpenVINO's default is bf16


def build_openvino_bf16(ctx) -> Classify:
    return _ov_compile(ctx, _ov_float(ctx), "")  # OpenVINO's CPU default precision (bf16 where the CPU has it)


def build_openvino_int8(ctx, ranges: str = "minmax") -> Classify:
    """NNCF int8. `minmax`: activation ranges from the min / max over every calibration photo, as
    the LiteRT converter and ONNX Runtime (MinMax) take them; `default`: NNCF's own, the *mean*
    over photos of each photo's min / max, which put the head's sigmoid output at [0, 0.51] for
    this model (a per-photo probability averages about 0.5) and clipped every pizza's probability;
    `mixed`: min / max ranges and NNCF's MIXED preset (asymmetric activations)."""
    import openvino as ov

    path = ctx.work / f"classifier-nncf-{ranges}-int8.xml"
    if not path.is_file():
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        advanced, preset = None, nncf.QuantizationPreset.MIXED if ranges == "mixed" else None
        if ranges in ("minmax", "mixed"):
            advanced = AdvancedQuantizationParameters(
                activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
            )
        dataset = nncf.Dataset(list(ctx.calibration), lambda p: p[None])
        model = nncf.quantize(
            _ov_float(ctx), dataset, subset_size=len(ctx.calibration), preset=preset, advanced_parameters=advanced
        )
        ov.save_model(model, str(path))
    return _ov_compile(ctx, ov.Core().read_model(str(path)), "f32")


BUILD = {
    "tensorflow": build_tensorflow,
    "litert": build_litert,
    "litert-int8": lambda ctx: build_litert(ctx, "litert-int8"),
    "onnx": build_onnx,
    "onnx-int8": build_onnx_int8,
    "onnx-int8-u8s8": lambda ctx: build_onnx_int8(ctx, "u8"),
    "openvino": build_openvino,
    "openvino-bf16": build_openvino_bf16,
    "openvino-int8": build_openvino_int8,
    "openvino-int8-mixed": lambda ctx: build_openvino_int8(ctx, "mixed"),
    "openvino-int8-nncf-default": lambda ctx: build_openvino_int8(ctx, "default"),
}


class Context:
    """What every engine is built from: the run's classifier, its photos decoded once, the work dir."""

    def __init__(self, run_dir: Path, version: Path, work: Path, threads: int):
        config = json.loads((run_dir / "config.json").read_text())
        self.meta = json.loads((version / "assets.extra" / "pizzactl.json").read_text())
        self.size, self.classes = int(self.meta["image_size"]), [str(c) for c in self.meta["classes"]]
        self.version, self.work, self.threads = version, work, threads
        self.classifier = load_run_classifier(run_dir)
        calibration, holdout = run_split(config)  # export's own: calibration_records(train, 100), the validation photos
        decode = decoder(self.size)
        self.photos = {"check": run_check_images(config), "holdout": [image for image, _ in holdout]}
        self.truth = np.array([label for _, label in holdout])
        self.pixels = {k: decode(v).numpy() for k, v in self.photos.items()}
        self.calibration = decode(calibration_sample(calibration)).numpy()

    def spec(self):
        import tensorflow as tf

        return tf.TensorSpec([None, self.size, self.size, 3], tf.float32, name="pixels")


def speed(classify: Classify, pixels: np.ndarray, batch: int) -> tuple[float, float]:
    """(images/s, CPU ms per image of this process) over `pixels`, `batch` images per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(pixels), batch):
        classify(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / len(pixels)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="where converted artefacts are cached")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=SERVER_BATCH)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    import_quietly()
    from pizzactl.model.runtimes import configure_tf_threads

    configure_tf_threads(args.threads, 1)  # the model server's TensorFlow setting, at --threads
    ctx = Context(args.run_dir, args.version_dir, args.work, args.threads)
    threshold = ctx.meta.get("threshold")
    reference = TensorFlowRuntime.load(args.version_dir, 0)  # export's reference: serving_default on the bytes
    want = {k: _answers(reference, v, ctx.classes) for k, v in ctx.photos.items()}
    del reference
    print(f"load average {os.getloadavg()}; {len(ctx.truth)} held-out, {len(ctx.photos['check'])} check photos")
    engines: dict[str, Classify] = {}
    results: dict[str, dict[str, Any]] = {}
    for name in args.engines.split(","):
        started = time.perf_counter()
        try:
            classify = BUILD[name](ctx)
            got = {k: answers(classify, v, ctx.classes, threshold) for k, v in ctx.pixels.items()}
        except Exception as exc:  # an engine that cannot take the model is a result too
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            continue
        engines[name] = classify
        results[name] = {"verdict": verdict(RULE[name], want, got, ctx.truth)}
        print(f"{name}: built and judged in {time.perf_counter() - started:.0f} s: {results[name]['verdict']}")
    pixels = ctx.pixels["holdout"][: args.images]
    rounds: dict[str, dict[str, list[float]]] = {
        name: {"batch1": [], "batchN": [], "cpu_ms": [], "cpu_msN": []} for name in engines
    }
    loads = [os.getloadavg()[0]]
    for classify in engines.values():  # warm up: first calls plan and allocate
        classify(pixels[:1])
        classify(pixels[: args.batch])
    for _ in range(args.rounds):
        for name, classify in engines.items():
            one, cpu = speed(classify, pixels, 1)
            many, cpu_many = speed(classify, pixels, args.batch)
            rounds[name]["batch1"].append(one)
            rounds[name]["batchN"].append(many)
            rounds[name]["cpu_ms"].append(cpu)
            rounds[name]["cpu_msN"].append(cpu_many)
        loads.append(os.getloadavg()[0])
    for name in engines:
        results[name]["speed"] = {k: statistics.median(v) for k, v in rounds[name].items()}
        results[name]["rounds"] = rounds[name]
    print(f"load average (1 min) during the rounds: {', '.join(f'{x:.1f}' for x in loads)}")
    if args.json:
        print(json.dumps({"load": loads, "results": results}, indent=1, default=float))
    print(
        f"| engine | export's rule | flips against / for | p (worse) | abs dp p50 / pq / max | held-out accuracy "
        f"| img/s batch 1 | img/s batch {args.batch} | CPU ms/img (batch 1 / {args.batch}) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, result in results.items():
        print(row(name, result))
    print(f"SavedModel held-out accuracy: {np.mean(want['holdout'][1] == ctx.truth):.4f} (n={len(ctx.truth)})")


if __name__ == "__main__":
    main()

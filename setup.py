"""Packaging that pyproject.toml cannot say: k8s/ and docker/ live at the top of the repository,
where users run `kubectl apply -k k8s/` and `docker build -f docker/...`, and are installed
inside the package (pizzactl/k8s, pizzactl/docker) so an installed pizzactl finds them.
Real directories, not symlinks: those break on Windows checkouts.

The model server's gRPC stubs are generated here from its .proto files with grpcio-tools
(a build requirement), never checked in: protoc's output must match the protobuf runtime.
TF Serving's API (protos/tfs/) becomes a descriptor set instead of `_pb2` modules: its message
names (tensorflow.TensorProto...) are TensorFlow's own, so they are loaded into a private
descriptor pool (serving/tfs_messages.py) where they cannot clash with TensorFlow or
tensorflow-serving-api in the same process.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PROTOS = Path(__file__).parent / "src" / "pizzactl" / "serving" / "modelserver" / "protos"
TFS_DESCRIPTORS = PROTOS / "tf_serving.binpb"


def generate_stubs() -> None:
    """`*_pb2.py` and `*_pb2_grpc.py` beside each .proto (imports rooted at src/)."""
    try:
        from grpc_tools import protoc
    except ImportError:
        print("warning: grpcio-tools is not installed: no gRPC stubs, the model server serves REST only")
        return
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    src = PROTOS.parents[3]
    for proto in sorted(PROTOS.glob("*.proto")):
        args = ["protoc", f"-I{src}", f"-I{include}", f"--python_out={src}", f"--grpc_python_out={src}", str(proto)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    tfs = PROTOS / "tfs"
    protos = sorted(str(p.relative_to(tfs)) for p in tfs.rglob("*.proto"))
    args = ["protoc", f"-I{tfs}", f"-I{include}", "--include_imports", f"--descriptor_set_out={TFS_DESCRIPTORS}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {tfs}")


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(
    packages=[*find_packages("src"), "pizzactl.k8s", "pizzactl.docker"],
    package_dir={"": "src", "pizzactl.k8s": "k8s", "pizzactl.docker": "docker"},
    package_data={
        "pizzactl": [
            "serving/static/*",
            "serving/modelserver/protos/*.proto",
            "serving/modelserver/protos/tf_serving.binpb",
            "serving/modelserver/protos/tfs/**/*.proto",
        ],
        "pizzactl.k8s": ["*.yaml", "training/*.yaml"],
        "pizzactl.docker": ["*"],
    },
    cmdclass={"build_py": BuildPyWithStubs},
)

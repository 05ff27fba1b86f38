"""Builds cedstore and its C++ core, cedstore._core, from csrc/ (see FORMAT.md)."""

import re
from glob import glob
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

core = Pybind11Extension(
    "cedstore._core",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    depends=sorted(glob("csrc/*.h*")),  # a changed header rebuilds the extension
    cxx_std=17,
    extra_compile_args=["-O3"],  # portable: no -march, no F16C; fp16 is converted in software
)

setup(
    name="cedstore",
    version=re.search(r'__version__ = "(.+)"', Path("cedstore/_version.py").read_text()).group(1),
    description="Consistent ensemble distillation: a fixed-record store of teacher top-k outputs",
    packages=find_packages(include=["cedstore*", "ced_train*"]),
    package_data={"ced_train": ["resources/*.csv", "resources/*.md"]},
    ext_modules=[core],
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.9",
    install_requires=["numpy>=1.24"],
    extras_require={
        "torch": ["torch>=2.1"],
        "train": ["torch>=2.1", "soundfile", "soxr", "matplotlib", "bitsandbytes"],
        # ONNX export (ced_train.onnx_export); onnxscript is torch's dynamo exporter.
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
        # The original CED's HDF5 logit files and parquet indices (cedstore.import_ced).
        "ced-original": ["h5py", "pyarrow"],
        "test": ["pytest", "hypothesis", "cffi", "scikit-learn",
                 "onnx", "onnxruntime", "onnxscript", "h5py", "pyarrow"],
        "bench": ["h5py"],
    },
    entry_points={"console_scripts": ["cedstore = cedstore.cli:main", "ced-train = ced_train.cli:main"]},
)

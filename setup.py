"""mtkd_tf: multi-task knowledge distillation for NLU (MT-DNN + KD) in TensorFlow/Keras."""

import re

from setuptools import find_packages, setup

# The version is mtkd_tf/version.py's; read from its text, since importing mtkd_tf needs TensorFlow.
with open("mtkd_tf/version.py", encoding="utf-8") as handle:
    VERSION = re.search(r'^__version__ = "([^"]+)"$', handle.read(), re.MULTILINE).group(1)

setup(
    name="mtkd_tf",
    version=VERSION,
    description=(
        "Multi-task deep neural networks with knowledge distillation (Liu et al. 2019) "
        "on TensorFlow, Keras and keras-hub"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["mtkd_tf", "mtkd_tf.*"]),
    scripts=["bin/run"],
    install_requires=[
        "tensorflow==2.21.0",
        "keras==3.15.1",
        "keras-hub==0.32.0",
        "tensorflow-text==2.21.1",
        "tensorflow-datasets==4.9.10",
        "tensorflow-serving-api==2.21.0",  # PredictionLog protos of the export's warm-up requests
        "tensorboard==2.21.0",
        "absl-py>=2.1",
        "importlib_resources>=6",  # tfds.load fails without it
        "safetensors>=0.4",  # keras-hub's Hugging Face checkpoint loader
        "scipy>=1.11",
        "pyyaml>=6",
        "matplotlib>=3.8",  # report plots
    ],
    extras_require={
        "hf": ["datasets>=3.0"],  # --data_source=hf: Hugging Face datasets on disk or in the local cache
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            "datasets>=3.0",
            "hypothesis>=6.100",
            "ruff==0.17.6",
        ],  # hypothesis: property-based fuzz tests of the readers and serving; ruff: the linter CI runs
    },
)

"""vlprompt: the engine package only. ``trainers/`` and ``datasets/`` stay repository-root folders
(as in CoOp) and are imported by ``train.py`` from the repository root; they are deliberately not
installed as top-level packages (``datasets`` would shadow the Hugging Face library)."""
import os.path as osp

from setuptools import find_packages, setup


def read_requirements():
    here = osp.dirname(osp.abspath(__file__))
    with open(osp.join(here, "requirements.txt")) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]


setup(
    name="vlprompt",
    version="0.1.0",
    description="Prompt learning on CLIP: APLe, MuDPT and baselines on a Dassl-compatible engine",
    packages=find_packages(include=["vlprompt", "vlprompt.*"]),
    include_package_data=True,
    package_data={"vlprompt": ["**/*.json", "**/*.txt", "**/*.csv", "**/*.pt", "**/*.safetensors"]},
    python_requires=">=3.9",
    install_requires=read_requirements(),
    extras_require={
        "dev": ["pytest>=7.4", "pytest-xdist>=3.5"],
        # the Hugging Face tokenizers of the SigLIP / SigLIP2 families (open_clip's HFTokenizer). Not in
        # requirements.txt: open_clip imports transformers at start-up once it is installed, which every
        # run would pay for (README, "Backbone families")
        "siglip": ["transformers>=4.38", "sentencepiece>=0.1.99"],
    },
)

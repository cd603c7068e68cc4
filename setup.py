"""shotstream_jax: streaming multi-shot video generation (ShotStream) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="shotstream_jax",
    version="0.1.0",
    description="ShotStream (causal multi-shot video generation) in JAX / Flax NNX",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["shotstream_jax", "shotstream_jax.*"]),
    # The shipped default model directory (shotstream_jax/default_model.py), when present.
    package_data={"shotstream_jax": ["assets/default_model/*", "assets/default_model/**/*"],
                  "shotstream_jax.studio": ["static/*"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "etils[epath]>=1.5",  # gs:// and local paths alike (orbax and grain use it too)
        "grain>=0.2",
        "einops>=0.8",
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.5",
        "safetensors>=0.4",
        "numpy>=1.26",
        "tqdm>=4.60",
        "sentencepiece>=0.2",
        "tokenizers>=0.15",
        "tensorboardX>=2.6",
        "matplotlib>=3.7",  # shotstream-eval's plot
        # shotstream-studio: the ASGI app, its server (websockets for the live socket), JPEG frames.
        "starlette>=0.40",
        "uvicorn>=0.30",
        "websockets>=12",
        "pillow>=10",
    ],
    extras_require={
        # PyTorch and the HF ports are references for tests and sources for
        # conversion only: the runtime path never imports them.
        "test": [
            "pytest>=7",
            "torch==2.13.0",
            "diffusers>=0.33",
            "transformers>=4.50",
            "httpx>=0.27",       # starlette's TestClient
            "selenium>=4.20",    # the studio's browser test (heavy), with Debian's chromium
        ],
        "convert": ["torch==2.13.0"],
        "gpu": ["jax[cuda12]>=0.10", "etils[epath-gcs]"],  # epath-gcs: gs:// work directories
        "tpu": ["jax[tpu]>=0.10", "etils[epath-gcs]"],
    },
    entry_points={
        "console_scripts": [
            "shotstream-generate=shotstream_jax.cli.generate:run",
            "shotstream-convert=shotstream_jax.cli.convert:run",
            "shotstream-train=shotstream_jax.cli.train:run",
            "shotstream-eval=shotstream_jax.cli.eval:run",
            "shotstream-bench=shotstream_jax.cli.bench:run",
            "shotstream-studio=shotstream_jax.cli.studio:run",
        ]
    },
)

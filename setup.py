from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("revin_fn/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="revin-fn",
    version=version["__version__"],
    description="Reversible instance normalization (RevIN) for time-series forecasting, as one functional call",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["revin_fn", "revin_fn.*"]),
    package_data={"revin_fn": ["py.typed", "data/ETTh1.csv", "data/ETTh2.csv", "data/NOTICE.md"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.1", "einops>=0.7"],
    extras_require={
        "demo": ["matplotlib>=3.7"],
        "triton": ["triton>=3.0"],
        "dev": [
            "pytest>=8",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "mypy>=1.10",
            "matplotlib>=3.7",
            "nbclient>=0.9",
            "nbformat>=5.9",
            "ipykernel>=6.25",
            "pandas>=1.5",  # Normalization.adapt(DataFrame) tests
        ],
    },
    entry_points={"console_scripts": ["revin-fn=revin_fn.__main__:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

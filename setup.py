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
    author="revin_fn contributors",
    # the code is MIT; the bundled demo data (revin_fn/demo/data/ETTh*.csv) is CC BY-ND 4.0
    license_expression="MIT AND CC-BY-ND-4.0",
    license_files=["LICENSE", "revin_fn/demo/data/NOTICE.md"],
    packages=find_packages(include=["revin_fn", "revin_fn.*"]),
    package_data={
        "revin_fn": ["py.typed"],
        "revin_fn.demo": ["data/ETTh1.csv", "data/ETTh2.csv", "data/NOTICE.md"],
    },
    python_requires=">=3.10",
    # torch 2.5: torch.compiler.is_exporting; einops 0.7: einops.parsing.ParsedExpression
    install_requires=["torch>=2.5", "einops>=0.7"],
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
            "build>=1.0",
            "onnx>=1.16",  # torch.onnx.export(..., dynamo=True) test
            "onnxscript>=0.2",
        ],
    },
    entry_points={"console_scripts": ["revin-fn=revin_fn.__main__:main"]},
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Typing :: Typed",
    ],
)

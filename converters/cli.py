"""`converter`: bake a trained model bundle into an edge bundle for the agent, and benchmark the model families."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from converters.bake import BakeError, BakeOptions, bake
from converters.benchmark import BenchmarkOptions, markdown, run_benchmark, write_tables
from converters.guard import Guard
from edge_agent.bundle import Int8Cpu
from edge_agent.console import run_cli, setup_logging
from edge_agent.errors import BundleError as EdgeBundleError
from edge_agent.runtimes.openvino_ops import cpu_isa, has_vnni
from trainer.bundle import BundleError
from trainer.data.dataset import DataError
from trainer.fit import RecipeError
from trainer.models import REGISTRY
from trainer.models.training import TrainingError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """Bake model bundles for the edge."""


@app.command("bake")
def bake_command(
    bundle: Annotated[Path, typer.Argument(help="model bundle written by `trainer fit`")],
    out: Annotated[Path, typer.Option(help="edge bundle folder to write")],
    target: Annotated[str, typer.Option(help="openvino | onnx | tensorrt")] = "openvino",
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8 (int8: openvino)")] = "fp32",
    calib: Annotated[
        Path | None,
        typer.Option(help="images of good parts to calibrate int8 on (default: the bundle's training images)"),
    ] = None,
    defects: Annotated[
        Path | None, typer.Option(help="images of defective parts: parity and the int8 guard also check AUROC")
    ] = None,
    max_auroc_drop: Annotated[float, typer.Option(min=0, help="int8/fp16 guard: AUROC points it may lose")] = 0.5,
    max_flip_rate: Annotated[
        float, typer.Option(min=0, max=1, help="int8/fp16 guard: share of verdicts outside --margin that may flip")
    ] = 0.01,
    margin: Annotated[
        float, typer.Option(min=0, max=1, help="int8/fp16 guard: flips this close to the threshold (share) not counted")
    ] = 0.05,
    engine_on_target: Annotated[
        bool, typer.Option(help="tensorrt without TensorRT here: write model.onnx; the agent builds the engine")
    ] = False,
    int8_cpu: Annotated[
        str,
        typer.Option(
            help="int8: the CPU class it runs on. any (7-bit weights, every x86 CPU) | vnni (8-bit weights, closer "
            "to torch; AVX-512 VNNI, AVX-VNNI or AMX only, the agent refuses it elsewhere) | native (this machine's)"
        ),
    ] = "any",
    sign_key: Annotated[
        Path | None,
        typer.Option(help="HMAC key file: sign the manifest, for agents whose model.hmac_key_file is the same key"),
    ] = None,
) -> None:
    """Export the whole pipeline as one graph, check it against torch, and write the edge bundle.

    Example: converter bake models/press2 --target openvino --precision int8 --out edge/press2
    """
    setup_logging()
    guard = Guard(max_auroc_drop=max_auroc_drop, max_flip_rate=max_flip_rate, margin=margin)
    cpu = _int8_cpu(int8_cpu)
    manifest = bake(BakeOptions(bundle, out, target, precision, calib, defects, guard, engine_on_target, cpu, sign_key))
    p = manifest.parity
    auroc = ""
    if p.auroc_reference is not None and p.auroc_baked is not None:
        auroc = f", AUROC {100 * p.auroc_reference:.2f} -> {100 * p.auroc_baked:.2f}"
    typer.echo(
        f"wrote {out}: {manifest.version}; parity on {p.images} images: max score diff "
        f"{p.score_rel_diff_max:.2e} relative, spearman {p.spearman:.5f}, verdicts agree {p.verdict_agreement:.1%}"
        f"{auroc}"
    )
    if manifest.kernels is not None:
        typer.echo(
            f"model head's matrix ops on this CPU, {manifest.kernels.cpu}: {', '.join(manifest.kernels.head)} "
            "(the search is int8 1x1 convolutions, oneDNN's fast int8 path with and without VNNI; another CPU "
            "class picks its own kernels, which the agent logs at start)"
        )
    if manifest.int8_cpu is not None:
        typer.echo(INT8_CPU_NOTES[manifest.int8_cpu])


@app.command("benchmark")
def benchmark_command(
    data: Annotated[
        Path, typer.Option(help="data set with labelled test images: MVTec category, folder layout, elpv:TYPE")
    ],
    out: Annotated[Path, typer.Option(help="folder for each family's bundles and benchmark.md / benchmark.csv")],
    models: Annotated[str, typer.Option(help="comma-separated model families")] = "patchcore,simplenet,fastflow",
    category: Annotated[str | None, typer.Option(help="category, when --data holds several")] = None,
    recipe: Annotated[
        list[str] | None, typer.Option(help="MODEL=RECIPE.yaml: a recipe file for one family (repeatable)")
    ] = None,
    frames: Annotated[int, typer.Option(min=10, help="timed frames per bake")] = 200,
) -> None:
    """Fit, evaluate, bake (OpenVINO fp32 and int8) and time every family on one data set; print one table.

    Example: converter benchmark --data datasets/press2 --out bench/press2

    Example: converter benchmark --data elpv:mono:0 --models patchcore,fastflow --recipe fastflow=ff.yaml --out b/
    """
    setup_logging()
    names = tuple(m.strip() for m in models.split(",") if m.strip())
    unknown = [m for m in names if m not in REGISTRY]
    if unknown or not names:
        raise BakeError(f"unknown --models {', '.join(unknown) or '(none)'}; choose from {', '.join(REGISTRY)}")
    options = BenchmarkOptions(data, names, out, category, _recipes(recipe or [], names), frames)
    results = run_benchmark(options)
    written = write_tables(results, options)
    typer.echo(markdown(results, options))
    typer.echo(f"wrote {', '.join(map(str, written))}")


def _recipes(pairs: list[str], names: tuple[str, ...]) -> dict[str, Path]:
    recipes: dict[str, Path] = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if name not in names or not path:
            raise BakeError(f"--recipe '{pair}' must be MODEL=FILE with MODEL one of --models ({', '.join(names)})")
        recipes[name] = Path(path)
    return recipes


INT8_CPU_NOTES = {
    "any": "int8 for any x86 CPU: 7-bit weights, exact on AVX2 too (--int8-cpu vnni: 8-bit, closer to torch)",
    "vnni": "int8 for VNNI CPUs (AVX-512 VNNI, AVX-VNNI, AMX): 8-bit weights; the agent refuses it on other CPUs",
}


def _int8_cpu(choice: str) -> Int8Cpu:
    """--int8-cpu as the manifest's value: native is this machine's class."""
    if choice == "native":
        return "vnni" if has_vnni(cpu_isa()) else "any"
    if choice not in ("any", "vnni"):
        raise BakeError(f"unknown --int8-cpu '{choice}'; choose any, vnni or native")
    return "vnni" if choice == "vnni" else "any"


def main() -> None:
    # EdgeBundleError: an unreadable --sign-key (the key file is read as the agent reads it).
    # DataError, RecipeError, TrainingError: `benchmark` fits, so it meets the trainer's errors too.
    run_cli(app, (BakeError, BundleError, EdgeBundleError, DataError, RecipeError, TrainingError, OSError))


if __name__ == "__main__":
    main()

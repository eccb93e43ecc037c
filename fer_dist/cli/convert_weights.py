"""Convert face-recognition ResNet-50 weights (VGGFace2) into a Keras weights file for `weights=PATH`.

\b
    python jobs/convert_weights.py resnet50_ft_weight.pkl vggface2_resnet50.weights.h5
    python jobs/train.py --preset best --set weights=vggface2_resnet50.weights.h5 --data fer2013.csv.gz

SOURCE: a VGGFace2 ResNet-50 as a pickled dict of NumPy arrays (cydonia999/VGGFace2-pytorch's
resnet50_ft_weight.pkl or resnet50_scratch_weight.pkl). OUTPUT: a new `.weights.h5` file
(never overwritten). The mapping and what it leaves out: fer_dist/weights.py.
"""

from __future__ import annotations

import typer

from fer_dist import cli, logs

app = cli.App()


@app.command(help=__doc__)
@cli.user_errors_exit
def main(
    source: str = typer.Argument(..., metavar="PICKLE", help="The VGGFace2 ResNet-50 pickle (name -> array)."),
    output: str = typer.Argument(..., metavar="WEIGHTS_H5", help="The Keras weights file to write (*.weights.h5)."),
) -> None:
    logs.setup_logging()
    from fer_dist import weights

    layers, count = weights.convert_file(source, output)
    print(f"wrote {output}: {layers} layers, {count:,} values; use --set weights={output}", flush=True)


if __name__ == "__main__":
    app()

"""Convert face-recognition ResNet-50 weights (VGGFace2) into a Keras weights file for `weights=PATH`.

    python jobs/convert_weights.py resnet50_ft_weight.pkl vggface2_resnet50.weights.h5
    python jobs/train.py --preset best --set weights=vggface2_resnet50.weights.h5 --data fer2013.csv.gz

SOURCE: a VGGFace2 ResNet-50 as a pickled dict of NumPy arrays (cydonia999/VGGFace2-pytorch's
resnet50_ft_weight.pkl or resnet50_scratch_weight.pkl). OUTPUT: a new `.weights.h5` file
(never overwritten). The mapping and what it leaves out: fer_dist/weights.py.
"""

from fer_dist.cli.convert_weights import app

if __name__ == "__main__":
    app()

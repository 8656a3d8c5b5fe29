"""``python tools/make_det_data.py --out data/fmnist_coco --train 4000 --val 200``: the Fashion-MNIST
instance-segmentation dataset in COCO format (see asvit_zoo.detection.fmnist_coco)."""
import sys

from asvit_zoo.detection.fmnist_coco import main

if __name__ == '__main__':
    sys.exit(main())

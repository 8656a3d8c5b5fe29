# The CPU-sized Mask R-CNN of mask-rcnn_asvit-seed_fpn_fmnist.py with a pretrained backbone: asvit_tiny with the
# shipped Fashion-MNIST classification weights (asvit_tiny.fmnist, grayscale; the tokenizer is adapted to RGB).
# The scenes' items come from the same dataset, so the backbone starts out knowing them. Images are normalised
# as the classifier's inputs were (Fashion-MNIST mean and std, on 0-255 values).
# Attention windows keep the default side of a 224 image (window_img_size=224), not the one of the 28x28 images the
# weights were trained on (window_img_size=28: windows of 4, 4, 2 and 1 tokens, none in stage 4): at 28 px, stages
# 2-4 attended over their whole grid, and on the scenes (sides of 112 to 160 px) the 224 windows still cover the
# whole grid of stages 2-4.
_base_ = './mask-rcnn_asvit-seed_fpn_fmnist.py'

model = dict(
    data_preprocessor=dict(mean=[72.93, 72.93, 72.93], std=[90.02, 90.02, 90.02]),
    backbone=dict(arch='asvit_tiny', init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='asvit_tiny.fmnist')),
    # neck in_channels: the channels of asvit_tiny's stages (tests/test_detection.py checks them).
    neck=dict(in_channels=[32, 64, 128, 256]))
# A pretrained backbone: layer-wise lr decay over it, the heads at the full rate.
optim_wrapper = dict(optimizer=dict(lr=0.002), paramwise_cfg=dict(layer_decay_rate=0.9))
# 1750 iterations (about 29 min of training on 2 CPU cores; benchmarks/bench_detection.py): the schedule of the
# from-scratch config (warm-up for the first tenth, then cosine) stretched over them.
max_iters = 1750
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=175),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=175, end=max_iters, eta_min_ratio=0.01),
]
